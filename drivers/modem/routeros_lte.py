"""A MikroTik's built-in LTE modem (Chateau, LtAP, R11e cards) through the RouterOS API.

RouterOS owns the modem; we only read it, through a small transport protocol
(`RouterOSCommandRunner`) that the RouterOS router driver's connection provides:

- /interface/lte/monitor numbers=lte1 once (v7) or /interface/lte/info (v6): one row of
  fields. The names differ: v7 has status, primary-band ("B3@20Mhz earfcn: 1300
  phy-cellid: 480"), data-class and iccid; v6 has registration-status, earfcn ("6400 (band
  20, bandwidth 10Mhz)"), access-technology ("Evolved 3G (LTE)") and uicc. Values carry
  units ("-97dBm", "-9dB"). Evidence: help.mikrotik.com "LTE" (monitor example) and a v6
  `info once` capture; see docs/modems.md.
- /interface/lte/at-chat numbers=lte1 input=<AT command>: the reply text in `output`.
  `RouterOSAtChannel` wraps it as an AtCommander, so the 27.007 parsers and the Quectel
  plugin (most built-in modems are Quectel EG06/EG12/EG18) run over it. Only read-only
  queries are sent: RouterOS keeps its own modem settings.
- Reset: at-chat AT+CFUN=1,1; when the modem does not answer even that,
  /system/routerboard/usb/power-reset (power-cycles the mini-PCIe slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from drivers import aio
from drivers.errors import DeviceReplyError, DriverError, RetryableError, UnsupportedError
from drivers.modem.at import parsers as p
from drivers.modem.at.protocol import AtCommander, AtError, AtResponse, classify_final, error_for
from drivers.types import (
    AccessTech,
    GnssFix,
    ModemEvent,
    ModemIdentity,
    ModemTime,
    Registration,
    SignalReport,
    SimState,
)


class RouterOSCommandRunner(Protocol):
    """What this driver needs of a RouterOS API connection (the router driver provides it).

    `run("/interface/lte/monitor", numbers="lte1", once="")` returns the reply rows as
    dicts of strings (a `!done =ret=` as a row {"ret": ...}); a !trap raises a
    DeviceReplyError. Over drivers.router.routeros.transport.Channel that is
    `reply = await channel.call(path, args); reply.rows or [{"ret": reply.ret}]`.
    """

    async def run(self, path: str, **args: str) -> list[dict[str, str]]: ...


class ChannelRunner:
    """RouterOSCommandRunner over the RouterOS transport's Channel (its own API session, so
    a slow at-chat never holds up the router driver's commands)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    async def run(self, path: str, **args: str) -> list[dict[str, str]]:
        reply = await self.channel.call(path, args)
        if reply.rows:
            return [dict(row) for row in reply.rows]
        return [{"ret": reply.ret}] if reply.ret is not None else []

    async def close(self) -> None:
        await self.channel.close()


# -- pure: one monitor/info row -> report --------------------------------------------------

_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    m = _NUM.search(value)
    return float(m.group(0)) if m else None


def _int(value: str | None) -> int | None:
    v = _number(value)
    return None if v is None else int(v)


def _registration(row: dict[str, str]) -> Registration:
    text = (row.get("registration-status") or row.get("status") or "").lower()
    if not text:
        return Registration.UNKNOWN
    if "roam" in text:
        return Registration.ROAMING
    if "denied" in text:
        return Registration.DENIED
    if "search" in text:
        return Registration.SEARCHING
    if "not" in text or "unregistered" in text or text in ("idle", "disabled"):
        return Registration.NOT_REGISTERED
    if "registered" in text or "connected" in text or "home" in text:
        return Registration.HOME
    return Registration.UNKNOWN


def _tech(row: dict[str, str]) -> AccessTech | None:
    text = (row.get("data-class") or row.get("access-technology") or "").lower()
    if "5g" in text or "nr" in re.split(r"\W+", text):
        return AccessTech.NR5G_SA if "sa" in re.split(r"\W+", text) else AccessTech.NR5G_NSA
    if "lte" in text:
        return AccessTech.LTE
    if any(k in text for k in ("umts", "hspa", "wcdma", "3g", "hsdpa")):
        return AccessTech.UMTS
    if any(k in text for k in ("gsm", "edge", "gprs")):
        return AccessTech.GSM
    return None


def _sim(row: dict[str, str]) -> SimState | None:
    text = (row.get("pin-status") or "").lower()
    if not text:
        return None
    if "puk" in text:
        return SimState.PUK_REQUIRED
    if "no sim" in text or "not inserted" in text or "sim not" in text:
        return SimState.ABSENT
    if text in ("ok", "no password required", "ready"):
        return SimState.READY
    if "pin" in text:
        return SimState.PIN_REQUIRED
    return None


def parse_lte_monitor(row: dict[str, str]) -> SignalReport:
    """One row of /interface/lte/monitor (v7) or /interface/lte/info (v6)."""
    band = earfcn = pci = None
    primary = row.get("primary-band")
    if primary:  # v7: "B3@20Mhz earfcn: 1300 phy-cellid: 480"
        m = re.match(r"\s*([Bn])(\d+)", primary)
        band = f"{m.group(1)}{m.group(2)}" if m else None
        e = re.search(r"earfcn:\s*(\d+)", primary)
        earfcn = int(e.group(1)) if e else None
        c = re.search(r"phy-cellid:\s*(\d+)", primary)
        pci = int(c.group(1)) if c else None
    elif row.get("earfcn"):  # v6: "6400 (band 20, bandwidth 10Mhz)"
        earfcn = _int(row["earfcn"])
        m = re.search(r"band\s*(\d+)", row["earfcn"])
        band = f"B{m.group(1)}" if m else None
    if pci is None:
        pci = _int(row.get("phy-cellid"))
    tech = _tech(row)
    cell = _int(row.get("current-cellid") or row.get("cell-id"))
    cell_id = cell if cell is not None and cell > 0 else None
    enb = _int(row.get("enb-id"))
    area = _int(row.get("tac") or row.get("lac"))
    mcc = mnc = None
    if row.get("mcc") and row.get("mnc"):
        mcc, mnc = row["mcc"].strip(), row["mnc"].strip()
    operator = row.get("current-operator") or None
    if operator and re.fullmatch(r"\d{5,6}", operator.strip()):
        mcc, mnc = p.split_plmn(operator.strip())
        operator = None
    rsrp = _int(row.get("rsrp"))
    rsrq = _number(row.get("rsrq"))
    sinr = _number(row.get("sinr"))
    rssi = _int(row.get("rssi"))
    functionality = (row.get("functionality") or "").lower()
    iccid_raw = row.get("iccid") or row.get("uicc")
    iccid = None
    if iccid_raw:
        with contextlib.suppress(DeviceReplyError):
            iccid = p.parse_iccid(iccid_raw)
    return SignalReport(
        registration=_registration(row),
        access_tech=tech,
        rssi_dbm=rssi if rssi is not None and -130 <= rssi < 0 else None,
        rsrp_dbm=rsrp if rsrp is not None and -156 <= rsrp <= -31 else None,
        rsrq_db=rsrq if rsrq is not None and -43 <= rsrq < 0 else None,
        sinr_db=sinr if sinr is not None and -30 <= sinr <= 60 else None,
        band=band,
        operator=operator,
        mcc=mcc,
        mnc=mnc,
        tac=area if area is not None and area not in (0, 0xFFFE, 0xFFFF) else None,
        cell_id=cell_id,
        enb_id=enb if enb is not None and enb > 0 else p.enb_id_of(cell_id, tech),
        pci=pci,
        earfcn=earfcn,
        sim_state=_sim(row),
        iccid=iccid,
        imei=row.get("imei") if (row.get("imei") or "").isdigit() else None,
        radio_on=None if not functionality else functionality == "full",
        connected=(row.get("status") or "").lower() == "connected"
        or bool(row.get("session-uptime")),
        source="routeros-lte",
    )


def parse_at_chat_output(command: str, output: str) -> AtResponse:
    """at-chat's `output` as an AtResponse; AtError when it ends in an error result."""
    lines = [ln.strip() for ln in output.replace("\r", "\n").split("\n") if ln.strip()]
    if lines and lines[0] == command.strip():
        lines = lines[1:]  # an echo
    if lines and classify_final(lines[-1], command) is not None:
        final = lines.pop()
        kind, _, _ = classify_final(final, command) or ("error", None, None)
        if kind != "ok":
            raise error_for(command, final, output)
        return AtResponse(command, tuple(lines), final, output)
    return AtResponse(command, tuple(lines), "OK", output)


class RouterOSAtChannel:
    """An AtCommander over /interface/lte/at-chat."""

    def __init__(self, runner: RouterOSCommandRunner, interface: str = "lte1") -> None:
        self.runner = runner
        self.interface = interface

    async def command(
        self,
        cmd: str,
        *,
        timeout_s: float | None = None,
        prefix: str | None = None,
        accept: Callable[[str], bool] | None = None,
    ) -> AtResponse:
        try:
            coro = self.runner.run("/interface/lte/at-chat", numbers=self.interface, input=cmd)
            rows = await (aio.wait_for(coro, timeout_s) if timeout_s else coro)
        except TimeoutError as exc:
            raise RetryableError(f"The router's modem did not answer {cmd} in time.") from exc
        except DeviceReplyError as exc:
            text = str(exc)
            if "ERROR" in text.upper():
                raise AtError(cmd, "ERROR", raw=getattr(exc, "raw", text)) from exc
            raise
        # The reply text comes as `output` in a row (or as the `!done` =ret=, which the
        # runner passes on as a row {"ret": ...}).
        output = "\n".join(row.get("output") or row.get("ret") or "" for row in rows)
        return parse_at_chat_output(cmd, output)


class RouterOSLteDriver:
    """Registry name: "routeros-lte". Reads the built-in modem; RouterOS keeps control of it."""

    name = "routeros-lte"

    def __init__(
        self,
        runner: RouterOSCommandRunner,
        interface: str = "lte1",
        *,
        use_at: bool = True,
        boot_timeout_s: float = 120.0,
        poll_s: float = 2.0,
    ) -> None:
        self.runner = runner
        self.interface = interface
        self.use_at = use_at
        self.at: AtCommander = RouterOSAtChannel(runner, interface)
        self.boot_timeout_s = boot_timeout_s
        self.poll_s = poll_s
        self._command: str | None = None  # "monitor" (v7) or "info" (v6), once found
        self._closed = asyncio.Event()
        self._row: dict[str, str] = {}
        self._owned_runner: ChannelRunner | None = None

    @classmethod
    def from_options(
        cls,
        *,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: Any = None,
        plain_api: bool = False,
        tls_ca_file: str | None = None,
        tls_verify: bool = True,
        timeout_s: float | None = None,
        interface: str = "lte1",
        **driver_options: Any,
    ) -> RouterOSLteDriver:
        """The driver on its own API session to the router, from the [router] connection
        settings (the same names the RouterOS router driver takes) and [modem] interface.
        NeedsHumanError when the settings cannot work (no host or user, unreadable CA)."""
        from drivers.router.routeros.transport import Channel, endpoint

        if password is not None and hasattr(password, "get_secret_value"):
            password = password.get_secret_value()
        ep = endpoint(host, port, username, password, plain_api=plain_api,
                      tls_ca_file=tls_ca_file, tls_verify=tls_verify,
                      timeout_s=float(timeout_s) if timeout_s else 10.0)
        runner = ChannelRunner(Channel(ep, "lte"))
        known = ("use_at", "boot_timeout_s", "poll_s")
        driver = cls(runner, interface, **{k: v for k, v in driver_options.items() if k in known})
        driver._owned_runner = runner
        return driver

    async def open(self) -> None:
        await self._read()

    async def close(self) -> None:
        self._closed.set()
        if self._owned_runner is not None:
            await self._owned_runner.close()

    async def ping(self) -> None:
        await self._read()

    async def identity(self) -> ModemIdentity:
        row = await self._read()
        report = parse_lte_monitor(row)
        return ModemIdentity(
            manufacturer=row.get("manufacturer"),
            model=row.get("model"),
            firmware=row.get("revision"),
            imei=report.imei,
            iccid=report.iccid,
        )

    async def read_report(self) -> SignalReport:
        row = await self._read()
        report = parse_lte_monitor(row)
        if self.use_at and report.registration.registered:
            report = await self._fill_from_at(report)
        return report

    async def network_time(self) -> ModemTime | None:
        if not self.use_at:
            return None
        if self._quectel():
            with contextlib.suppress(AtError, DeviceReplyError):
                r = await self.at.command("AT+QLTS=1")
                from drivers.modem.quectel import parse_qlts_gmt

                t = parse_qlts_gmt(p.find_line(r.lines, "+QLTS:"))
                if t is not None:
                    return t
        try:
            r = await self.at.command("AT+CCLK?")
        except AtError:
            return None
        return p.parse_cclk(p.find_line(r.lines, "+CCLK:"))

    async def gnss_fix(self) -> GnssFix | None:
        return None  # RouterOS reads GNSS itself (/system/gps); not through the modem driver

    async def set_radio(self, on: bool) -> None:
        """Disable/enable the lte interface: RouterOS powers the radio down and up with it."""
        await self.runner.run("/interface/lte/set", numbers=self.interface,
                              disabled="no" if on else "yes")

    async def reset(self) -> None:
        try:
            await self.at.command("AT+CFUN=1,1", timeout_s=10.0)
        except DriverError:
            await self.runner.run("/system/routerboard/usb/power-reset", duration="5s")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout_s
        await asyncio.sleep(min(self.poll_s, self.boot_timeout_s))
        while loop.time() < deadline:
            with contextlib.suppress(RetryableError):
                if parse_lte_monitor(await self._read()).registration is not Registration.UNKNOWN:
                    return
            await asyncio.sleep(self.poll_s)
        raise RetryableError(
            f"The router's modem did not come back within {self.boot_timeout_s:g} s of its reset."
        )

    def events(self) -> AsyncIterator[ModemEvent]:
        return self._no_events()

    async def _no_events(self) -> AsyncIterator[ModemEvent]:
        await self._closed.wait()
        return
        yield  # pragma: no cover

    # -- helpers -------------------------------------------------------------------------

    async def _read(self) -> dict[str, str]:
        order = [self._command] if self._command else ["monitor", "info"]
        last: DriverError | None = None
        for command in order:
            assert command is not None
            try:
                rows = await self.runner.run(
                    f"/interface/lte/{command}", numbers=self.interface, once=""
                )
            except (DeviceReplyError, UnsupportedError) as exc:
                last = exc
                continue
            if not rows:
                raise DeviceReplyError(
                    f"The router returned nothing for /interface/lte/{command} {self.interface}."
                )
            self._command = command
            self._row = {k: str(v) for k, v in rows[-1].items()}
            return self._row
        assert last is not None
        raise last

    def _quectel(self) -> bool:
        text = f"{self._row.get('manufacturer', '')} {self._row.get('model', '')}".lower()
        model = self._row.get("model", "").lower()
        return "quectel" in text or re.match(r"\s*e[cg]\d{2}", model) is not None

    async def _fill_from_at(self, report: SignalReport) -> SignalReport:
        """PLMN and TAC when the monitor lacks them, by read-only queries."""
        if report.mcc is not None and report.tac is not None:
            return report
        with contextlib.suppress(AtError, DeviceReplyError, RetryableError):
            if self._quectel():
                from drivers.modem.quectel import parse_qeng_servingcell

                r = await self.at.command('AT+QENG="servingcell"')
                q = parse_qeng_servingcell(r.lines)
                report = dataclasses.replace(
                    report,
                    mcc=report.mcc or q.mcc,
                    mnc=report.mnc or q.mnc,
                    tac=report.tac if report.tac is not None else q.tac,
                )
            if report.mcc is None:
                r = await self.at.command("AT+COPS?")
                cops = p.parse_cops(p.find_line(r.lines, "+COPS:"))
                report = dataclasses.replace(report, mcc=cops.mcc, mnc=cops.mnc)
        return report

"""The generic 3GPP TS 27.007 modem driver, with thin vendor plugins (as ModemManager).

`AtModemDriver` reads everything 27.007 defines (SIM, radio, registration, operator,
signal, identity, clock) and hands the report to a `VendorPlugin`, which adds only what
its vendor does differently: Quectel's servingcell line, Sierra's !GSTATUS, Telit's
#RFSTS, and each vendor's reset. The vendor is told in the config or found from +CGMI.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from drivers import aio
from drivers.errors import DeviceReplyError, NeedsHumanError, RetryableError, UnsupportedError
from drivers.modem import profiles
from drivers.modem.at import parsers as p
from drivers.modem.at.channel import AtChannel
from drivers.modem.at.protocol import AtCommander, AtError
from drivers.types import (
    AccessTech,
    GnssFix,
    ModemEvent,
    ModemEventKind,
    ModemIdentity,
    ModemTime,
    Registration,
    SignalReport,
    SimState,
)

log = logging.getLogger(__name__)

#: Vendor name -> plugin class, imported only when that vendor is met.
PLUGINS: dict[str, str] = {
    "quectel": "drivers.modem.quectel:QuectelPlugin",
    "sierra": "drivers.modem.sierra:SierraPlugin",
    "telit": "drivers.modem.telit:TelitPlugin",
}

#: +CGMI text -> vendor name.
_MANUFACTURERS = (("quectel", "quectel"), ("sierra", "sierra"), ("telit", "telit"))


class VendorPlugin:
    """Plain 27.007; subclasses change only what their vendor does differently."""

    name = "generic"
    #: Unsolicited codes of this vendor, so they are never mistaken for reply lines.
    urc_prefixes: tuple[str, ...] = ()
    #: Sent after the generic set-up; an ERROR is tolerated (older firmware).
    init_commands: tuple[str, ...] = ()
    iccid_commands: tuple[str, ...] = ("AT+CCID", "AT+ICCID")
    #: 3GPP TS 27.007 8.2: <fun>=1 with <rst>=1 resets the MT before setting full functionality.
    reset_command = "AT+CFUN=1,1"
    #: The line the modem prints when it is up again (None: poll with AT).
    ready_urc: str | None = None
    boot_timeout_s = 90.0
    #: Wait before polling a restarting modem that prints no ready line.
    reset_settle_s = 5.0
    has_nr5g = False

    def __init__(self, profile: profiles.ModemProfile | None = None) -> None:
        self.profile = profile
        if profile is not None:
            self.boot_timeout_s = float(profile.setting("boot_timeout_s", self.boot_timeout_s))
            self.reset_settle_s = float(profile.setting("reset_settle_s", self.reset_settle_s))
            self.has_nr5g = bool(profile.setting("nr5g", self.has_nr5g))

    async def enrich(self, at: AtCommander, report: SignalReport) -> SignalReport:
        return report

    async def network_time(self, at: AtCommander) -> ModemTime | None:
        try:
            r = await at.command("AT+CCLK?")
        except AtError:
            return None
        return p.parse_cclk(p.find_line(r.lines, "+CCLK:"))

    async def gnss_fix(self, at: AtCommander) -> GnssFix | None:
        return None

    def event_for(self, line: str) -> ModemEvent | None:
        """A vendor's unsolicited line as an event (None: not this vendor's)."""
        if self.ready_urc and line.strip().upper() == self.ready_urc.upper():
            return ModemEvent(ModemEventKind.REBOOTED, raw=line)
        return None


def vendor_of(manufacturer: str | None) -> str:
    low = (manufacturer or "").lower()
    for needle, vendor in _MANUFACTURERS:
        if needle in low:
            return vendor
    return "generic"


def load_plugin(vendor: str, profile: profiles.ModemProfile | None) -> VendorPlugin:
    target = PLUGINS.get(vendor)
    if target is None:
        return VendorPlugin(profile)
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    plugin: VendorPlugin = cls(profile)
    return plugin


class AtModemDriver:
    """A USB/serial modem over AT commands. Registry name: "at" (vendor found by +CGMI)."""

    def __init__(
        self,
        port: str | None = None,
        *,
        vendor: str | None = None,
        at: AtCommander | None = None,
        timeout_s: float = 5.0,
        hang_after: int = 3,
        boot_timeout_s: float | None = None,
        reset_settle_s: float | None = None,
        reset_command_timeout_s: float = 10.0,
        power_cycle: Callable[[], Awaitable[None]] | None = None,
        profiles_base: Any = None,
    ) -> None:
        if at is None:
            if port is None:
                raise ValueError("AtModemDriver needs a port URL or an AT commander")
            at = AtChannel(port, timeout_s=timeout_s, hang_after=hang_after)
        self.at = at
        self.port = port
        self.requested_vendor = vendor
        self.plugin = VendorPlugin()
        self._boot_timeout_s = boot_timeout_s
        self._reset_command_timeout_s = reset_command_timeout_s
        #: The hard way back when the AT port itself is hung (see `usb_reauthorize`).
        self.power_cycle = power_cycle
        self._reset_settle_s = reset_settle_s
        self._profiles_base = profiles_base
        self._identity: ModemIdentity | None = None
        self._iccid: str | None = None
        self._operator_names: dict[str, str] = {}
        self._events: asyncio.Queue[ModemEvent] = asyncio.Queue(maxsize=100)
        self._unsubscribe: Any = None

    @property
    def name(self) -> str:
        return f"at/{self.plugin.name}"

    # -- life cycle ----------------------------------------------------------------------

    async def open(self) -> None:
        if isinstance(self.at, AtChannel):
            await self.at.open()
        await self._quiet("AT+CMEE=1")
        manufacturer = await self._text("AT+CGMI", "+CGMI:")
        model = await self._text("AT+CGMM", "+CGMM:")
        vendor = self.requested_vendor or vendor_of(manufacturer)
        profile = profiles.find(vendor, model, self._profiles_base)
        self.plugin = load_plugin(vendor, profile)
        if self._boot_timeout_s is not None:
            self.plugin.boot_timeout_s = self._boot_timeout_s
        if self._reset_settle_s is not None:
            self.plugin.reset_settle_s = self._reset_settle_s
        if isinstance(self.at, AtChannel):
            self.at.add_urc_prefixes(*self.plugin.urc_prefixes)
            if self._unsubscribe is None:
                self._unsubscribe = self.at.subscribe("", self._on_urc)
        await self._setup()
        log.info("modem %s %s (%s plugin, profile %s)", manufacturer, model, self.plugin.name,
                 profile.path.name if profile else "none")

    async def _setup(self) -> None:
        """Settings a restart forgets: echo, numeric errors, numeric PLMN, location in reports."""
        await self._quiet("ATE0")
        await self._quiet("AT+CMEE=1")
        await self._quiet("AT+COPS=3,2")
        for cmd in ("AT+CREG=2", "AT+CGREG=2", "AT+CEREG=2"):
            await self._quiet(cmd)
        if self.plugin.has_nr5g:
            await self._quiet("AT+C5GREG=2")
        for cmd in self.plugin.init_commands:
            await self._quiet(cmd)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if isinstance(self.at, AtChannel):
            await self.at.close()

    async def ping(self) -> None:
        await self.at.command("AT", timeout_s=2.0)

    # -- reading -------------------------------------------------------------------------

    async def identity(self) -> ModemIdentity:
        manufacturer = await self._text("AT+CGMI", "+CGMI:")
        model = await self._text("AT+CGMM", "+CGMM:")
        firmware = await self._text("AT+CGMR", "+CGMR:")
        imei = None
        with contextlib.suppress(AtError):
            imei = p.parse_imei((await self.at.command("AT+CGSN")).lines)
        iccid = await self._read_iccid()
        self._identity = ModemIdentity(manufacturer, model, firmware, imei, iccid)
        return self._identity

    async def read_report(self) -> SignalReport:
        sim = await self._sim_state()
        radio_on = await self._radio_on()
        reg = await self._registration()
        plmn = await self._plmn()
        csq = await self._optional("AT+CSQ", p.parse_csq)
        cesq = await self._optional("AT+CESQ", p.parse_cesq)
        if self._identity is None:
            await self.identity()
        assert self._identity is not None
        if sim is SimState.READY and self._iccid is None:
            await self._read_iccid()
        if sim is SimState.ABSENT:
            self._iccid = None
        tech = reg.access_tech if reg is not None else None
        if tech is None and plmn is not None:
            tech = plmn.access_tech
        mcc = plmn.mcc if plmn is not None else None
        mnc = plmn.mnc if plmn is not None else None
        report = SignalReport(
            registration=reg.registration if reg is not None else Registration.UNKNOWN,
            access_tech=tech,
            rssi_dbm=csq.rssi_dbm if csq is not None else None,
            rsrp_dbm=cesq.rsrp_dbm if cesq is not None else None,
            rsrq_db=cesq.rsrq_db if cesq is not None else None,
            operator=await self._operator_name(mcc, mnc),
            mcc=mcc,
            mnc=mnc,
            tac=reg.area if reg is not None else None,
            cell_id=reg.cell_id if reg is not None else None,
            enb_id=p.enb_id_of(reg.cell_id if reg is not None else None, tech),
            sim_state=sim,
            iccid=self._iccid,
            imei=self._identity.imei,
            radio_on=radio_on,
            source=self.name,
        )
        if cesq is not None and report.rssi_dbm is None and cesq.rxlev_dbm is not None:
            report = dataclasses.replace(report, rssi_dbm=cesq.rxlev_dbm)
        return await self.plugin.enrich(self.at, report)

    async def network_time(self) -> ModemTime | None:
        return await self.plugin.network_time(self.at)

    async def gnss_fix(self) -> GnssFix | None:
        return await self.plugin.gnss_fix(self.at)

    # -- acting --------------------------------------------------------------------------

    async def set_radio(self, on: bool) -> None:
        await self.at.command("AT+CFUN=1" if on else "AT+CFUN=4", timeout_s=30.0)

    async def reset(self) -> None:
        """The vendor's reset; returns when the modem answers again and is set up again."""
        plugin = self.plugin
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        unsubscribe = None
        if plugin.ready_urc and isinstance(self.at, AtChannel):
            unsubscribe = self.at.subscribe(plugin.ready_urc, lambda _line: ready.set())
        try:
            try:
                await self.at.command(plugin.reset_command, timeout_s=self._reset_command_timeout_s)
            except AtError:
                raise
            except RetryableError as exc:  # hung, or restarting before it could answer
                if self.power_cycle is None:
                    log.info("no answer to %s (%s); waiting", plugin.reset_command, exc)
                else:
                    log.warning("no answer to %s (%s); power-cycling", plugin.reset_command, exc)
                    await self.power_cycle()
            await self._wait_until_back(ready, loop.time() + plugin.boot_timeout_s)
        finally:
            if unsubscribe is not None:
                unsubscribe()
        self._iccid = None
        self._identity = None
        await self._setup()

    async def _wait_until_back(self, ready: asyncio.Event, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        channel = self.at if isinstance(self.at, AtChannel) else None
        watch_urc = self.plugin.ready_urc is not None and channel is not None
        if not watch_urc:
            await asyncio.sleep(min(self.plugin.reset_settle_s, max(0.0, deadline - loop.time())))
        port_went_away = False
        while loop.time() < deadline:
            if ready.is_set():
                return
            if channel is not None and not channel.is_open:
                port_went_away = True
            if watch_urc and not port_went_away:
                with contextlib.suppress(TimeoutError):
                    await aio.wait_for(ready.wait(), min(1.0, deadline - loop.time()))
                continue
            try:
                await self.at.command("AT", timeout_s=1.0)
                return
            except RetryableError:
                await asyncio.sleep(min(1.0, max(0.0, deadline - loop.time())))
        raise RetryableError(
            f"The modem did not come back within {self.plugin.boot_timeout_s:g} s of its reset."
        )

    def events(self) -> AsyncIterator[ModemEvent]:
        return self._event_stream()

    async def _event_stream(self) -> AsyncIterator[ModemEvent]:
        while True:
            yield await self._events.get()

    # -- helpers -------------------------------------------------------------------------

    def _on_urc(self, line: str) -> None:
        event = self.plugin.event_for(line) or _generic_event(line)
        if event.kind is ModemEventKind.SIM and event.sim_state is not SimState.READY:
            self._iccid = None
        if self._events.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._events.get_nowait()
        self._events.put_nowait(event)

    async def _quiet(self, cmd: str) -> None:
        try:
            await self.at.command(cmd)
        except AtError as exc:
            log.debug("%s refused: %s", cmd, exc)

    async def _text(self, cmd: str, prefix: str) -> str | None:
        try:
            r = await self.at.command(cmd, prefix="")
        except AtError:
            return None
        return p.parse_info_text(r.lines, prefix)

    async def _optional(self, cmd: str, parse: Any) -> Any:
        """Parse a command's reply line; None when the modem does not support the command."""
        try:
            r = await self.at.command(cmd)
        except AtError:
            return None
        prefix = cmd[2:].split("=")[0].rstrip("?") + ":"
        return parse(p.find_line(r.lines, prefix))

    async def _sim_state(self) -> SimState | None:
        try:
            r = await self.at.command("AT+CPIN?")
        except AtError as exc:
            return p.CME_SIM_STATE.get(exc.code) if exc.kind == "cme" and exc.code else None
        return p.parse_cpin(p.find_line(r.lines, "+CPIN:"))

    async def _radio_on(self) -> bool | None:
        fun = await self._optional("AT+CFUN?", p.parse_cfun)
        return None if fun is None else fun == 1

    async def _registration(self) -> p.RegistrationInfo | None:
        found: list[p.RegistrationInfo] = []
        commands = ["AT+C5GREG?"] if self.plugin.has_nr5g else []
        commands += ["AT+CEREG?", "AT+CGREG?", "AT+CREG?"]
        for cmd in commands:
            try:
                r = await self.at.command(cmd, accept=p.registration_is_solicited)
            except AtError:
                continue
            prefix = cmd[2:-1] + ":"
            info = p.parse_registration(p.find_line(r.lines, prefix), solicited=True)
            if info.registration.registered:
                return info
            found.append(info)
        if not found:
            return None
        lte = [i for i in found if i.command == "CEREG"]
        return lte[0] if lte else found[0]

    async def _plmn(self) -> p.Cops | None:
        cops = await self._optional("AT+COPS?", p.parse_cops)
        if cops is not None and cops.mcc is None and cops.operator is not None:
            await self._quiet("AT+COPS=3,2")  # the format was changed behind our back
            cops = await self._optional("AT+COPS?", p.parse_cops)
        return cops

    async def _operator_name(self, mcc: str | None, mnc: str | None) -> str | None:
        """The network's name, asked once per PLMN (it needs the format switched)."""
        if mcc is None or mnc is None:
            return None
        plmn = mcc + mnc
        if plmn not in self._operator_names:
            name = None
            try:
                await self.at.command("AT+COPS=3,0")
                cops = await self._optional("AT+COPS?", p.parse_cops)
                name = cops.operator if cops is not None else None
            finally:
                await self._quiet("AT+COPS=3,2")
            if name is None:
                return None
            self._operator_names[plmn] = name
        return self._operator_names[plmn]

    async def _read_iccid(self) -> str | None:
        for cmd in self.plugin.iccid_commands:
            try:
                r = await self.at.command(cmd)
            except AtError:
                continue
            try:
                self._iccid = p.parse_iccid(r.text())
            except DeviceReplyError:
                continue
            return self._iccid
        return None


def usb_reauthorize(port: str, *, off_s: float = 2.0) -> Callable[[], Awaitable[None]]:
    """A power-cycle for a USB modem whose AT port is hung: de-authorise its USB device and
    authorise it again (sysfs `authorized`, Linux USB core), which unbinds every driver and
    re-enumerates it like a replug. Needs root; the tty path may change name afterwards
    unless the config names a /dev/serial/by-id link."""

    def find_device() -> Path:
        tty = Path(port).resolve().name
        node = Path(f"/sys/class/tty/{tty}/device").resolve()
        for parent in (node, *node.parents):
            if (parent / "authorized").exists() and (parent / "idVendor").exists():
                return parent / "authorized"
        raise UnsupportedError(f"The modem port {port} is not on USB; it cannot be replugged.")

    async def cycle() -> None:
        path = await asyncio.to_thread(find_device)
        try:
            await asyncio.to_thread(path.write_text, "0")
            await asyncio.sleep(off_s)
            await asyncio.to_thread(path.write_text, "1")
        except OSError as exc:
            raise NeedsHumanError(
                f"The agent may not replug the modem ({exc}).",
                remedy="Run the agent as root (or with write access to the USB device), "
                "or power-cycle the modem by hand.",
            ) from exc

    return cycle


def _generic_event(line: str) -> ModemEvent:
    upper = line.strip().upper()
    if upper.startswith(("+CREG:", "+CGREG:", "+CEREG:", "+C5GREG:")):
        try:
            info = p.parse_registration(line, solicited=False)
        except DeviceReplyError:
            return ModemEvent(ModemEventKind.OTHER, raw=line)
        return ModemEvent(
            ModemEventKind.REGISTRATION,
            registration=info.registration,
            tac=info.area,
            cell_id=info.cell_id,
            raw=line,
        )
    if upper.startswith("+CPIN:"):
        try:
            state = p.parse_cpin(line)
        except DeviceReplyError:
            state = None
        return ModemEvent(ModemEventKind.SIM, sim_state=state, raw=line)
    return ModemEvent(ModemEventKind.OTHER, raw=line)


def lte_like(tech: AccessTech | None) -> bool:
    return tech in (AccessTech.LTE, AccessTech.LTE_CAT_M, AccessTech.NR5G_NSA)

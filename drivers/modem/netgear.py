"""Netgear Ethernet LTE modems (LM1200, LB1120, LB2120) over their local web API.

The providers ship one on the router's LTE port (RB2011 ether10, hAP ac2 ether5). What we
rely on, with its evidence (eternalegypt, the library behind Home Assistant's netgear_lte
integration, and other clients; details in docs/modems.md):

- GET /api/model.json: one JSON document with everything: `session.secToken` (a token
  for form posts; `session.userRole` "Guest" until logged in), `wwan` (connection,
  registerNetworkDisplay, roaming, currentNWserviceType, signalStrength {rssi, rsrp, rsrq,
  sinr, bars}), `wwanadv` (curBand "LTE B2", MCC, MNC, LAC, cellId, chanId), `sim` (status,
  iccid), `general` (model, FWversion, IMEI). Without a login the radio figures are shown
  but the SIM and identifiers may be hidden.
- Login: POST /Forms/config with session.password and token (form-encoded); the modem
  sets a session cookie and redirects to ok_redirect or err_redirect.
- Connect/disconnect: POST /Forms/config wwan.connect=DefaultProfile or Disconnect.
- Reboot: POST /Forms/config general.reboot=true (seen in one client only; unverified).

urllib (standard library) carries it, bridged with asyncio.to_thread, one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

from drivers.errors import DeviceReplyError, NeedsHumanError, RetryableError
from drivers.modem.at.parsers import enb_id_of, parse_iccid
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

MODEL_PATH = "/api/model.json"
CONFIG_PATH = "/Forms/config"


# -- pure: model.json -> report ----------------------------------------------------------


def _get(data: Any, *path: str) -> Any:
    """Nested lookup, case-insensitive on keys; None when any step is missing."""
    cur = data
    for key in path:
        if not isinstance(cur, dict):
            return None
        if key in cur:
            cur = cur[key]
            continue
        lower = {str(k).lower(): v for k, v in cur.items()}
        cur = lower.get(key.lower())
    return cur


_NUM_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")


def _num(value: Any) -> float | None:
    """A number from 13, "-105", "-105 dBm"; None for bools, junk and empty."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    m = _NUM_RE.match(str(value))
    return float(m.group(1)) if m else None


def _dbm(value: Any, lo: float, hi: float) -> int | None:
    """0 means "none" here (an LTE modem reports rscp 0, ecio 0); outside [lo, hi] too."""
    n = _num(value)
    if n is None or n == 0 or not lo <= n <= hi:
        return None
    return round(n)


def _tech(service: str) -> AccessTech | None:
    s = service.lower()
    if "5g" in s or "nr" in s.split():
        return AccessTech.NR5G_NSA if "nsa" in s or "endc" in s else AccessTech.NR5G_SA
    if "lte" in s:
        return AccessTech.LTE
    if any(k in s for k in ("umts", "hspa", "wcdma", "3g")):
        return AccessTech.UMTS
    if any(k in s for k in ("gsm", "edge", "gprs")):
        return AccessTech.GSM
    return None


def _sim_state(status: Any, pin_mode: Any) -> SimState | None:
    """sim.status strings are not documented; matched by keyword, unknown -> None."""
    s = str(status or "").lower().replace("_", " ")
    if not s:
        return None
    if "puk" in s:
        return SimState.PUK_REQUIRED
    if "pin" in s and ("lock" in s or "required" in s or "enter" in s):
        return SimState.PIN_REQUIRED
    if any(k in s for k in ("no sim", "nosim", "absent", "not inserted", "missing", "not present")):
        return SimState.ABSENT
    if "ready" in s or s == "ok":
        return SimState.READY
    if "error" in s or "fail" in s or "invalid" in s:
        return SimState.FAILED
    return None


def parse_model(data: Any) -> SignalReport:
    """model.json -> SignalReport. DeviceReplyError when it has no `wwan` section at all."""
    if not isinstance(data, dict) or not isinstance(_get(data, "wwan"), dict):
        raise DeviceReplyError(
            "The Netgear modem's model.json has no wwan section.", raw=json.dumps(data)[:4000]
        )
    service = str(_get(data, "wwan", "currentNWserviceType") or "")
    connection = str(_get(data, "wwan", "connection") or "")
    operator = _get(data, "wwan", "registerNetworkDisplay") or None
    tech = _tech(service) or _tech(str(_get(data, "wwan", "RAT") or ""))
    roaming = _get(data, "wwan", "roaming") is True
    sim = _sim_state(_get(data, "sim", "status"), _get(data, "sim", "pin", "mode"))
    if roaming:
        registration = Registration.ROAMING
    elif connection.lower() == "connected" or (operator and tech is not None):
        registration = Registration.HOME
    elif sim is SimState.ABSENT:
        registration = Registration.NOT_REGISTERED
    elif service.lower() in ("", "noservice", "no service"):
        registration = Registration.SEARCHING
    else:
        registration = Registration.UNKNOWN
    sig = _get(data, "wwan", "signalStrength") or {}
    rsrp = _dbm(_get(sig, "rsrp"), -156, -31)
    rsrq = _num(_get(sig, "rsrq"))
    sinr = _num(_get(sig, "sinr"))
    band_text = str(_get(data, "wwanadv", "curBand") or "")
    m = re.search(r"\bB(?:and)?\s*(\d+)", band_text, re.IGNORECASE)
    band = f"B{m.group(1)}" if m else None
    mcc = _get(data, "wwanadv", "MCC")
    mnc = _get(data, "wwanadv", "MNC")
    mnc_width = _num(_get(data, "wwanadv", "MNCFmt"))
    mcc_s = str(mcc).strip() if mcc not in (None, "") else None
    mnc_s = str(mnc).strip() if mnc not in (None, "") else None
    if mnc_s is not None and mnc_s.isdigit() and mnc_width in (2.0, 3.0):
        mnc_s = mnc_s.zfill(int(mnc_width))
    if mcc_s is not None and (not mcc_s.isdigit() or len(mcc_s) != 3 or mcc_s == "000"):
        mcc_s = None
    if mnc_s is not None and not (mnc_s.isdigit() and 2 <= len(mnc_s) <= 3):
        mnc_s = None
    cell = _num(_get(data, "wwanadv", "cellId"))
    cell_id = int(cell) if cell is not None and 0 < cell < 0xFFFFFFF else None
    lac = _num(_get(data, "wwanadv", "LAC"))
    tac = int(lac) if lac is not None and 0 < lac < 0xFFFE else None
    earfcn = _num(_get(data, "wwanadv", "chanId"))
    iccid_raw = _get(data, "sim", "iccid")
    iccid = None
    if iccid_raw:
        try:
            iccid = parse_iccid(str(iccid_raw))
        except DeviceReplyError:
            iccid = None
    imei = _get(data, "general", "IMEI")
    lpm = _get(data, "power", "lpm")
    return SignalReport(
        registration=registration,
        access_tech=tech,
        rssi_dbm=_dbm(_get(sig, "rssi"), -130, -20),
        rsrp_dbm=rsrp,
        rsrq_db=rsrq if rsrq is not None and rsrq != 0 and -43 <= rsrq <= 20 else None,
        sinr_db=sinr if rsrp is not None and sinr is not None and -30 <= sinr <= 60 else None,
        band=band,
        operator=str(operator) if operator else None,
        mcc=mcc_s,
        mnc=mnc_s,
        tac=tac,
        cell_id=cell_id,
        enb_id=enb_id_of(cell_id, tech),
        earfcn=int(earfcn) if earfcn is not None and earfcn > 0 else None,
        sim_state=sim,
        iccid=iccid,
        imei=str(imei) if imei and str(imei).isdigit() else None,
        radio_on=None if lpm is None else lpm is not True,
        connected=connection.lower() == "connected" if connection else None,
        source="netgear",
    )


def parse_identity(data: Any) -> ModemIdentity:
    report = parse_model(data)
    model = _get(data, "general", "model") or _get(data, "general", "deviceName")
    return ModemIdentity(
        manufacturer=str(_get(data, "general", "manufacturer") or "Netgear"),
        model=str(model) if model else None,
        firmware=str(_get(data, "general", "FWversion") or "") or None,
        imei=report.imei,
        iccid=report.iccid,
    )


# -- the driver (I/O) --------------------------------------------------------------------


class NetgearDriver:
    """Registry name: "netgear". One HTTP request at a time; logs in again when logged out."""

    name = "netgear"

    def __init__(
        self,
        host: str,
        password: str,
        *,
        port: int = 80,
        timeout_s: float = 5.0,
        boot_timeout_s: float = 180.0,
        poll_s: float = 3.0,
    ) -> None:
        self.base = f"http://{host}" if port == 80 else f"http://{host}:{port}"
        self.password = password
        self.timeout_s = timeout_s
        self.boot_timeout_s = boot_timeout_s
        self.poll_s = poll_s
        self._jar = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self._jar))
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._closed = asyncio.Event()

    async def open(self) -> None:
        await self._login()

    async def close(self) -> None:
        self._closed.set()

    async def ping(self) -> None:
        await self._model()

    async def identity(self) -> ModemIdentity:
        return parse_identity(await self._model(admin=True))

    async def read_report(self) -> SignalReport:
        return parse_model(await self._model(admin=True))

    async def network_time(self) -> ModemTime | None:
        return None  # general.currTime exists, but its meaning is not documented anywhere we found

    async def gnss_fix(self) -> GnssFix | None:
        return None

    async def set_radio(self, on: bool) -> None:
        """The web API connects and disconnects the LTE session (no airplane mode)."""
        await self._form({"wwan.connect": "DefaultProfile" if on else "Disconnect"})

    async def reset(self) -> None:
        with contextlib.suppress(RetryableError):  # it may drop the connection as it goes
            await self._form({"general.reboot": "true"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout_s
        await asyncio.sleep(min(self.poll_s, self.boot_timeout_s))
        while loop.time() < deadline:
            try:
                await self._login()
                return
            except RetryableError:
                await asyncio.sleep(self.poll_s)
        raise RetryableError(
            f"The Netgear modem did not come back within {self.boot_timeout_s:g} s of its reboot."
        )

    def events(self) -> AsyncIterator[ModemEvent]:
        return self._no_events()

    async def _no_events(self) -> AsyncIterator[ModemEvent]:
        await self._closed.wait()
        return
        yield  # pragma: no cover - makes this an async generator

    # -- HTTP ----------------------------------------------------------------------------

    async def _login(self) -> None:
        data = await self._get_json(MODEL_PATH)
        token = _get(data, "session", "secToken")
        if not token:
            raise DeviceReplyError(
                "The Netgear modem's model.json carries no session token.",
                raw=json.dumps(data)[:4000],
            )
        final_url = await self._post(
            CONFIG_PATH,
            {"session.password": self.password, "token": str(token),
             "ok_redirect": "/success.json", "err_redirect": "/error.json"},
        )
        if final_url.endswith("/error.json"):
            raise NeedsHumanError(
                "The Netgear modem refused the admin password.",
                remedy="Set the modem's admin password (printed on its label) in the config.",
            )
        data = await self._get_json(MODEL_PATH)
        role = _get(data, "session", "userRole")
        if role is not None and str(role).lower() != "admin":
            raise NeedsHumanError(
                "The Netgear modem did not accept the login (still a guest).",
                remedy="Check the modem's admin password in the config.",
            )
        self._token = str(_get(data, "session", "secToken") or token)

    async def _model(self, *, admin: bool = False) -> dict[str, Any]:
        data = await self._get_json(MODEL_PATH)
        role = _get(data, "session", "userRole")
        if admin and role is not None and str(role).lower() != "admin":
            await self._login()  # the session expired or the modem rebooted
            data = await self._get_json(MODEL_PATH)
        token = _get(data, "session", "secToken")
        if token:
            self._token = str(token)
        return data

    async def _form(self, fields: dict[str, str]) -> None:
        if self._token is None:
            await self._login()
        await self._post(
            CONFIG_PATH,
            {**fields, "token": self._token or "", "ok_redirect": "/success.json",
             "err_redirect": "/error.json"},
        )

    async def _get_json(self, path: str) -> dict[str, Any]:
        text = await self._request(path, None)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeviceReplyError(
                f"The Netgear modem's {path} is not JSON ({exc.msg}).", raw=text[:4000]
            ) from exc
        if not isinstance(data, dict):
            raise DeviceReplyError(f"The Netgear modem's {path} is not a JSON object.", raw=text)
        return data

    async def _post(self, path: str, fields: dict[str, str]) -> str:
        body = urllib.parse.urlencode(fields).encode()
        return await self._request(path, body, want_url=True)

    async def _request(self, path: str, body: bytes | None, *, want_url: bool = False) -> str:
        async with self._lock:
            return await asyncio.to_thread(self._blocking_request, path, body, want_url)

    def _blocking_request(self, path: str, body: bytes | None, want_url: bool) -> str:
        url = self.base + path
        req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
        if body is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                text = resp.read().decode("utf-8", errors="replace")
                return str(resp.geturl()) if want_url else text
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise NeedsHumanError(
                    f"The Netgear modem refused {path} (HTTP {exc.code}).",
                    remedy="Check the modem's admin password in the config.",
                ) from exc
            raise RetryableError(f"The Netgear modem answered HTTP {exc.code} to {path}.") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RetryableError(
                f"The Netgear modem at {self.base} did not answer ({reason})."
            ) from exc

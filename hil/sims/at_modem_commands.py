"""Command handlers of the AT modem simulator (hil/sims/at_modem.py): 27.007 and vendors.

Each handler takes the simulator, the command kind ("exec", "read", "set", "test") and the
arguments, and returns the information lines; CmeError/PlainError end it with an error.
Reply formats and their evidence: docs/sims-modem.md.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hil.sims.at_modem import AtModemSim


class CmeError(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class PlainError(Exception):
    pass


CME_TEXT = {3: "operation not allowed", 4: "operation not supported", 10: "SIM not inserted",
             14: "SIM busy", 30: "no network service", 505: "Session not active",
             516: "Not fixed now"}


def split_commands(body: str) -> list[str]:
    """V.250 concatenation: "+COPS=3,2;+COPS?" -> ["+COPS=3,2", "+COPS?"]."""
    parts, cur, quoted = [], "", False
    for ch in body:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()] or [""]


def parse(cmd: str) -> tuple[str, str, list[str]]:
    """"+CEREG=2" -> ("+CEREG", "set", ["2"]); "+CSQ" -> ("+CSQ", "exec", [])."""
    upper = cmd.upper()
    for suffix, kind in (("=?", "test"), ("?", "read")):
        if upper.endswith(suffix) and "=" not in upper[: -len(suffix)]:
            return upper[: -len(suffix)], kind, []
    if "=" in cmd:
        name, _, rest = cmd.partition("=")
        return name.upper(), "set", [a.strip().strip('"') for a in rest.split(",")]
    return upper, "exec", []


# -- 27.007 handlers ---------------------------------------------------------------------


def _need_sim(sim: AtModemSim) -> None:
    if not sim.radio.sim_present:
        raise CmeError(10)


def _cmee(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    if kind == "read":
        return [f"+CMEE: {sim.session.cmee}"]
    if kind == "set" and args[0] in ("0", "1", "2"):
        sim.session.cmee = int(args[0])
        return []
    raise PlainError


def _ident(value: str) -> Any:
    def handler(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
        return [getattr(sim.profile, value)] if kind == "exec" else []
    return handler


def _cpin(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    _need_sim(sim)
    return ["+CPIN: READY"]


def _cfun(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    if kind == "read":
        return [f"+CFUN: {sim.radio.cfun}"]
    if kind == "set" and args[0] in ("0", "1", "4"):
        sim.radio.cfun = int(args[0])
        sim.report_registration()
        return []
    raise PlainError


def _reg(name: str) -> Any:
    def handler(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
        if name == "+C5GREG" and not sim.profile.nr5g:
            raise PlainError
        n = sim.session.reg_n
        if kind == "set":
            if args[0] not in ("0", "1", "2", "3", "4", "5"):
                raise PlainError
            n[name] = int(args[0])
            return []
        if kind != "read":
            return [f"{name}: (0-2)"]
        r = sim.radio
        stat = r.stat if r.sim_present and r.cfun == 1 else 0
        if name == "+C5GREG" and r.mode != "NR5G-SA":
            stat = 0
        if n[name] >= 2 and stat in (1, 5):
            return [f'{name}: {n[name]},{stat},"{r.tac:04X}","{r.cell_id:X}",{r.act}']
        return [f"{name}: {n[name]},{stat}"]
    return handler


def _cops(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    r = sim.radio
    if kind == "set":
        if args[0] == "3" and len(args) > 1 and args[1] in ("0", "1", "2"):
            sim.session.cops_format = int(args[1])
        return []
    if kind != "read":
        raise PlainError
    if not r.registered:
        return ["+COPS: 0"]
    fmt = sim.session.cops_format
    oper = r.mcc + r.mnc if fmt == 2 else r.operator
    return [f'+COPS: 0,{fmt},"{oper}",{r.act}']


def _csq(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    r = sim.radio
    if not r.registered:
        return ["+CSQ: 99,99"]
    return [f"+CSQ: {max(0, min(31, (r.rssi_dbm + 113) // 2))},99"]


def _cesq(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    r = sim.radio
    if not r.registered:
        return ["+CESQ: 99,99,255,255,255,255"]
    rsrq = max(0, min(34, round((r.rsrq_db + 20) * 2)))
    rsrp = max(0, min(97, r.rsrp_dbm + 141))
    return [f"+CESQ: 99,99,255,255,{rsrq},{rsrp}"]


def _clock(sim: AtModemSim, *, gmt: bool) -> str | None:
    r = sim.radio
    if r.network_utc_s is None:
        return None
    utc = r.network_utc_s + (time.monotonic() - r.network_set_at)
    local = utc if gmt else utc + r.tz_quarters * 900
    sign = "-" if r.tz_quarters < 0 else "+"
    stamp = time.strftime("%Y/%m/%d,%H:%M:%S", time.gmtime(local))
    return stamp + f"{sign}{abs(r.tz_quarters):02d}"


def _cclk(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    if kind != "read":
        return []
    value = _clock(sim, gmt=False)
    # Before any network time the clock runs from the firmware's epoch (assumed 1980-01-06).
    return [f'+CCLK: "{value[2:] if value else "80/01/06,00:01:23+00"}"']


def _ok(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    return []


HANDLERS: dict[str, Any] = {
    "+CMEE": _cmee,
    "+CGMI": _ident("manufacturer"),
    "+GMI": _ident("manufacturer"),
    "+CGMM": _ident("model"),
    "+GMM": _ident("model"),
    "+CGMR": _ident("revision"),
    "+GMR": _ident("revision"),
    "+CGSN": _ident("imei"),
    "+GSN": _ident("imei"),
    "+CPIN": _cpin,
    "+CFUN": _cfun,
    "+CREG": _reg("+CREG"),
    "+CGREG": _reg("+CGREG"),
    "+CEREG": _reg("+CEREG"),
    "+C5GREG": _reg("+C5GREG"),
    "+COPS": _cops,
    "+CSQ": _csq,
    "+CESQ": _cesq,
    "+CCLK": _cclk,
    "+CTZU": _ok,
    "+CTZR": _ok,
}


# -- vendor handlers ---------------------------------------------------------------------


def _iccid_on_card(sim: AtModemSim) -> str:
    return sim.radio.iccid.ljust(20, "F")


def _sinr_q(sim: AtModemSim, db: float) -> str:
    if sim.profile.sinr_fifth_db:
        return str(max(0, min(250, round((db + 20) * 5))))
    return str(round(db))


def _qeng(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    if kind != "set" or args[0].lower() != "servingcell":
        raise PlainError
    r = sim.radio
    if not r.registered:
        return ['+QENG: "servingcell","SEARCH"']
    lte = (f'"FDD",{r.mcc},{r.mnc},{r.cell_id:X},{r.pci},{r.earfcn},{r.band},5,5,{r.tac:X},'
           f'{r.rsrp_dbm},{round(r.rsrq_db)},{r.rssi_dbm},{_sinr_q(sim, r.sinr_db)}')
    if r.mode == "NR5G-NSA":
        return ['+QENG: "servingcell","NOCONN"', f'+QENG: "LTE",{lte},9,-32768,-', (
            f'+QENG: "NR5G-NSA",{r.mcc},{r.mnc},{r.pci + 400},{r.nr_rsrp_dbm},'
            f'{round(r.nr_sinr_db)},{round(r.nr_rsrq_db)},{r.nr_arfcn},{r.nr_band},2,0')]
    if r.mode == "NR5G-SA":
        return [f'+QENG: "servingcell","NOCONN","NR5G-SA","FDD",{r.mcc},{r.mnc},'
                f'{r.cell_id:X},{r.pci},{r.tac:X},{r.nr_arfcn},{r.nr_band},2,{r.nr_rsrp_dbm},'
                f'{round(r.nr_rsrq_db)},{round(r.nr_sinr_db)},0,-']
    tail = ",-,-,-" if sim.profile.nr5g else ",-"
    return [f'+QENG: "servingcell","NOCONN","LTE",{lte}{tail}']


def _qcsq(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    r = sim.radio
    if not r.registered:
        return ['+QCSQ: "NOSERVICE"']
    return [f'+QCSQ: "LTE",{r.rssi_dbm},{r.rsrp_dbm},{_sinr_q(sim, r.sinr_db)},{round(r.rsrq_db)}']


def _qccid(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    _need_sim(sim)
    return [f"+QCCID: {_iccid_on_card(sim)}"]


def _ccid(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    _need_sim(sim)
    return [f"+CCID: {_iccid_on_card(sim)}"]


def _qgps(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    if kind == "read":
        return [f"+QGPS: {int(sim.session.gnss_on)}"]
    if kind == "set":
        if sim.session.gnss_on:
            raise CmeError(504)
        sim.session.gnss_on = True
    return []


def _qgpsloc(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    if not sim.session.gnss_on:
        raise CmeError(505)
    if sim.radio.gnss is None:
        raise CmeError(516)
    lat, lon = sim.radio.gnss
    now = time.gmtime()
    return [f"+QGPSLOC: {time.strftime('%H%M%S', now)}.000,{lat:.5f},{lon:.5f},1.1,62.0,3,0.00,"
            f"0.0,0.0,{time.strftime('%d%m%y', now)},07"]


def _qlts(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    value = _clock(sim, gmt=not args or args[0] == "1")
    return [f'+QLTS: "{value},0"' if value else '+QLTS: ""']


def _gstatus(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    r = sim.radio
    online = r.registered
    mode = "LTE" if online else "No Service"

    def v(value: object) -> str:  # no service: nothing measured, Sierra prints "--"
        return str(value) if online else "--"

    return [
        "!GSTATUS: ",
        "Current Time:  4021\t\tTemperature: 40",
        "Reset Counter: 1\t\tMode:        ONLINE         ",
        f"System mode:   {mode}        \t"
        f"PS state:    {'Attached' if online else 'Not attached'}     ",
        f"LTE band:      B{r.band}     \t\tLTE bw:      20 MHz  ",
        f"LTE Rx chan:   {r.earfcn}\t\tLTE Tx chan: {r.earfcn + 18000}",
        "LTE CA state:  NOT ASSIGNED",
        f"EMM state:     {'Registered' if online else 'Deregistered'}     \tNormal Service ",
        "RRC state:     RRC Idle       ",
        "IMS reg state: No Srv  \t\t",
        "",
        f"PCC RxM RSSI:  {v(r.rssi_dbm)}\t\tRSRP (dBm):  {v(r.rsrp_dbm)}",
        f"PCC RxD RSSI:  {v(r.rssi_dbm - 2)}\t\tRSRP (dBm):  {v(r.rsrp_dbm - 3)}",
        f"Tx Power:      --\t\tTAC:         {v(f'{r.tac:04X} ({r.tac})')}",
        f"RSRQ (dB):     {v(f'{r.rsrq_db:.1f}')}\t\t"
        f"Cell ID:     {v(f'{r.cell_id:08X} ({r.cell_id})')}",
        f"SINR (dB):      {v(f'{r.sinr_db:.1f}')}",
    ]


def _sierra_iccid(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    _need_sim(sim)
    return [f"!ICCID: {sim.radio.iccid}"]


def _rfsts(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    r = sim.radio
    if not r.registered:
        raise CmeError(30)
    sinr = max(0, min(250, round((r.sinr_db + 20) * 5)))
    return [f'#RFSTS: "{r.mcc} {r.mnc}",{r.earfcn},{r.rsrp_dbm},{r.rssi_dbm},'
            f'{round(r.rsrq_db)},{r.tac:04X},FF,0,64,19,1,{r.cell_id:07X},"310260000000001",'
            f'"{r.operator}",3,{r.band},{sinr}']


def _telit_iccid(prefix: str) -> Any:
    def handler(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
        _need_sim(sim)
        return [f"{prefix}: {sim.radio.iccid}"]
    return handler


def _qss(sim: AtModemSim, kind: str, args: list[str]) -> list[str]:
    if kind == "set":
        sim.session.qss = args[0] != "0"
        return []
    return [f"#QSS: {int(sim.session.qss)},{3 if sim.radio.sim_present else 0}"]


VENDOR_HANDLERS: dict[tuple[str, str], Any] = {
    ("quectel", "+QENG"): _qeng,
    ("quectel", "+QCSQ"): _qcsq,
    ("quectel", "+QCCID"): _qccid,
    ("quectel", "+CCID"): _ccid,
    ("quectel", "+QGPS"): _qgps,
    ("quectel", "+QGPSEND"): _ok,
    ("quectel", "+QGPSLOC"): _qgpsloc,
    ("quectel", "+QLTS"): _qlts,
    ("sierra", "!GSTATUS"): _gstatus,
    ("sierra", "!ICCID"): _sierra_iccid,
    ("sierra", "!RESET"): _ok,
    ("sierra", "!ENTERCND"): _ok,
    ("telit", "#RFSTS"): _rfsts,
    ("telit", "#REBOOT"): _ok,
    ("telit", "+ICCID"): _telit_iccid("+ICCID"),
    ("telit", "#CCID"): _telit_iccid("#CCID"),
    ("telit", "#QSS"): _qss,
}

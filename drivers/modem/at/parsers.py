"""Pure parsers for 3GPP TS 27.007 replies: text in, numbers in dBm/dB out, None for unknown.

No I/O, no clock, no logging. A reply that cannot be read raises DeviceReplyError with the
raw text, never a wrong number: the sentinels 99 and 255 ("not known or not detectable"),
-32768, "-", "--" and all-F hex codes become None. Tested from tables of literal replies
in tests/unit/test_at_parsers.py. Where ModemManager (src/mm-modem-helpers.c) handles a
reply shape, we follow it and say so.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass

from drivers.errors import DeviceReplyError
from drivers.types import AccessTech, ModemTime, Registration, SimState

# -- fields ------------------------------------------------------------------------------


def raw_fields(payload: str) -> list[str]:
    """Split a reply's parameters on commas outside double quotes, keeping the quotes."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in payload:
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == "," and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def unquote(value: str) -> str:
    v = value.strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1]
    return v


def fields(payload: str) -> list[str]:
    """Parameters with quotes removed."""
    return [unquote(f) for f in raw_fields(payload)]


def payload_of(line: str, prefix: str) -> str:
    """The text after `prefix` ("+CSQ:") on `line`; DeviceReplyError when it is not there."""
    s = line.strip()
    if not s.upper().startswith(prefix.upper()):
        raise bad(prefix, line)
    return s[len(prefix) :].strip()


def find_line(lines: list[str] | tuple[str, ...] | str, prefix: str) -> str:
    """The first line starting with `prefix`; DeviceReplyError (raw kept) when none does."""
    seq = lines.splitlines() if isinstance(lines, str) else list(lines)
    for line in seq:
        if line.strip().upper().startswith(prefix.upper()):
            return line.strip()
    raise bad(prefix, "\n".join(seq), what="had no")


def bad(prefix: str, raw: str, *, what: str = "could not be read in") -> DeviceReplyError:
    shown = raw.strip().replace("\r", " ").replace("\n", " | ")
    if len(shown) > 120:
        shown = shown[:117] + "..."
    if what == "had no":
        message = f"The modem's reply had no {prefix} line: {shown!r}."
    else:
        message = f"The modem's {prefix} reply could not be read: {shown!r}."
    return DeviceReplyError(message, raw=raw)


_NONE_TOKENS = {"", "-", "--", "---", "NA", "N/A"}


def opt_int(value: str, *, prefix: str, raw: str, sentinels: tuple[int, ...] = ()) -> int | None:
    """Decimal integer, None for "-", "--", "" and the given sentinels; error otherwise."""
    v = unquote(value).strip()
    if v.upper() in _NONE_TOKENS:
        return None
    if not re.fullmatch(r"[+-]?\d+", v):
        raise bad(prefix, raw)
    n = int(v)
    if n in sentinels or n == -32768:
        return None
    return n


def opt_float(value: str, *, prefix: str, raw: str) -> float | None:
    v = unquote(value).strip()
    if v.upper() in _NONE_TOKENS:
        return None
    if not re.fullmatch(r"[+-]?\d+(\.\d+)?", v):
        raise bad(prefix, raw)
    f = float(v)
    if f == -32768:
        return None
    return f


#: LAC/TAC values that mean "none": 0000 and FFFE are reserved (3GPP TS 23.003 4.1/19.4.2.3),
#: FFFF is what modems print when they have none.
_NO_AREA = {0x0000, 0xFFFE, 0xFFFF}


def opt_hex(value: str, *, prefix: str, raw: str, area: bool = False) -> int | None:
    """Hex code ("1A2B", "0x1A2B", "1a2b"); None for empty, "-" and all-F (and, for area
    codes, the reserved 0000/FFFE)."""
    v = unquote(value).strip()
    if v.upper() in _NONE_TOKENS:
        return None
    if v[:2].lower() == "0x":
        v = v[2:]
    if not re.fullmatch(r"[0-9A-Fa-f]{1,10}", v):
        raise bad(prefix, raw)
    if set(v.upper()) == {"F"}:
        return None
    n = int(v, 16)
    if area and n in _NO_AREA:
        return None
    return n


# -- signal ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Csq:
    rssi_dbm: int | None
    ber: int | None


def parse_csq(line: str) -> Csq:
    """+CSQ: <rssi>,<ber> (27.007 8.5): 0 = -113 dBm or less, 2 dBm per step, 31 = -51 dBm
    or more, 99 = unknown. Quectel's 100-199 (TD-SCDMA RSCP) is not RSSI: None."""
    p = payload_of(line, "+CSQ:")
    f = fields(p)
    if len(f) != 2:
        raise bad("+CSQ:", line)
    rssi = opt_int(f[0], prefix="+CSQ:", raw=line, sentinels=(99,))
    ber = opt_int(f[1], prefix="+CSQ:", raw=line, sentinels=(99,))
    if rssi is not None and not 0 <= rssi <= 31:
        if 100 <= rssi <= 199:
            rssi = None
        else:
            raise bad("+CSQ:", line)
    return Csq(rssi_dbm=None if rssi is None else -113 + 2 * rssi, ber=ber)


@dataclass(frozen=True)
class Cesq:
    rxlev_dbm: int | None
    rscp_dbm: int | None
    ecno_db: float | None
    rsrq_db: float | None
    rsrp_dbm: int | None


def parse_cesq(line: str) -> Cesq:
    """+CESQ: <rxlev>,<ber>,<rscp>,<ecno>,<rsrq>,<rsrp> (27.007 8.69). Each index names the
    lower edge of a range: rsrp 1 = -140 dBm ... 97 = -44 dBm (0 = below -140: -141); rsrq
    0.5 dB steps from -19.5 (1) to -3 (34); 99/255 = not known."""
    p = payload_of(line, "+CESQ:")
    f = fields(p)
    if len(f) != 6:
        raise bad("+CESQ:", line)

    def idx(i: int, unknown: int, top: int) -> int | None:
        n = opt_int(f[i], prefix="+CESQ:", raw=line, sentinels=(unknown,))
        if n is not None and not 0 <= n <= top:
            raise bad("+CESQ:", line)
        return n

    rxlev = idx(0, 99, 63)
    rscp = idx(2, 255, 96)
    ecno = idx(3, 255, 49)
    rsrq = idx(4, 255, 34)
    rsrp = idx(5, 255, 97)
    return Cesq(
        rxlev_dbm=None if rxlev is None else -111 + rxlev,
        rscp_dbm=None if rscp is None else -121 + rscp,
        ecno_db=None if ecno is None else -24.5 + ecno * 0.5,
        rsrq_db=None if rsrq is None else -20.0 + rsrq * 0.5,
        rsrp_dbm=None if rsrp is None else -141 + rsrp,
    )


# -- registration ------------------------------------------------------------------------

#: 27.007 <stat> of +CREG/+CGREG/+CEREG/+C5GREG.
_STAT: dict[int, Registration] = {
    0: Registration.NOT_REGISTERED,
    1: Registration.HOME,
    2: Registration.SEARCHING,
    3: Registration.DENIED,
    4: Registration.UNKNOWN,
    5: Registration.ROAMING,
    6: Registration.HOME,  # registered for "SMS only", home
    7: Registration.ROAMING,  # registered for "SMS only", roaming
    8: Registration.NOT_REGISTERED,  # attached for emergency bearer services only
    9: Registration.HOME,  # registered for "CSFB not preferred", home
    10: Registration.ROAMING,  # registered for "CSFB not preferred", roaming
    11: Registration.NOT_REGISTERED,  # emergency services only (C5GREG)
}

#: 27.007 <AcT> (shared by +COPS and the registration commands).
ACT: dict[int, AccessTech] = {
    0: AccessTech.GSM,
    1: AccessTech.GSM,  # GSM compact
    2: AccessTech.UMTS,
    3: AccessTech.GSM,  # GSM w/EGPRS
    4: AccessTech.UMTS,  # UTRAN w/HSDPA
    5: AccessTech.UMTS,  # UTRAN w/HSUPA
    6: AccessTech.UMTS,  # UTRAN w/HSDPA and HSUPA
    7: AccessTech.LTE,
    8: AccessTech.GSM,  # EC-GSM-IoT
    9: AccessTech.NB_IOT,  # E-UTRAN (NB-S1 mode)
    10: AccessTech.LTE,  # E-UTRA connected to a 5GCN
    11: AccessTech.NR5G_SA,  # NR connected to a 5GCN
    12: AccessTech.NR5G_SA,  # NG-RAN
    13: AccessTech.NR5G_NSA,  # E-UTRA-NR dual connectivity
}

_REG_PREFIXES = ("+CREG:", "+CGREG:", "+CEREG:", "+C5GREG:")


@dataclass(frozen=True)
class RegistrationInfo:
    command: str  # "CREG", "CGREG", "CEREG" or "C5GREG"
    solicited: bool
    n: int | None
    stat: int
    registration: Registration
    #: LAC (CREG/CGREG) or TAC (CEREG/C5GREG).
    area: int | None = None
    cell_id: int | None = None
    act: int | None = None

    @property
    def access_tech(self) -> AccessTech | None:
        return None if self.act is None else ACT.get(self.act)


def _reg_prefix(line: str) -> str:
    s = line.strip().upper()
    for p in _REG_PREFIXES:
        if s.startswith(p):
            return p
    raise bad("+CREG:", line)


def registration_is_solicited(line: str) -> bool:
    """Tell a query reply (+CEREG: <n>,<stat>...) from an unsolicited report (+CEREG: <stat>
    [,<tac>,<ci>...]) by shape: the reply's second field is a bare <stat> digit, the report's
    is a (usually quoted) hex area code. The same rule as ModemManager's CREG regexes."""
    try:
        prefix = _reg_prefix(line)
    except DeviceReplyError:
        return False
    rf = raw_fields(payload_of(line, prefix))
    return len(rf) >= 2 and re.fullmatch(r"\d{1,2}", rf[1]) is not None


def parse_registration(line: str, *, solicited: bool | None = None) -> RegistrationInfo:
    """Any of +CREG/+CGREG/+CEREG/+C5GREG, query reply or unsolicited, hex codes quoted or
    not. The old CEREG form with a RAC (<n>,<stat>,<tac>,<rac>,<ci>,<AcT>, 27.007 v8.6, as
    ModemManager's CEREG2) is recognised by its six fields."""
    prefix = _reg_prefix(line)
    rf = raw_fields(payload_of(line, prefix))
    if solicited is None:
        solicited = registration_is_solicited(line)
    f = [unquote(x) for x in rf]
    if solicited:
        if len(f) < 2:
            raise bad(prefix, line)
        n = opt_int(f[0], prefix=prefix, raw=line)
        rest = f[1:]
    else:
        n = None
        rest = f
    stat = opt_int(rest[0], prefix=prefix, raw=line)
    if stat is None or stat not in _STAT:
        raise bad(prefix, line)
    loc = rest[1:]
    if prefix == "+CEREG:" and solicited and len(f) == 6:
        loc = [loc[0], loc[2], loc[3]]  # drop the RAC
    area = opt_hex(loc[0], prefix=prefix, raw=line, area=True) if len(loc) > 0 else None
    cell = opt_hex(loc[1], prefix=prefix, raw=line) if len(loc) > 1 else None
    act = opt_int(loc[2], prefix=prefix, raw=line) if len(loc) > 2 else None
    if act is not None and act not in ACT:
        act = None
    return RegistrationInfo(
        command=prefix[1:-1],
        solicited=solicited,
        n=n,
        stat=stat,
        registration=_STAT[stat],
        area=area,
        cell_id=cell,
        act=act,
    )


def enb_id_of(cell_id: int | None, tech: AccessTech | None) -> int | None:
    """eNodeB id of an E-UTRAN cell identity: its upper 20 bits (3GPP TS 36.413 9.2.1.38)."""
    if cell_id is None or tech not in (AccessTech.LTE, AccessTech.LTE_CAT_M, AccessTech.NR5G_NSA):
        return None
    if cell_id > 0xFFFFFFF:
        return None
    return cell_id >> 8


# -- operator ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cops:
    mode: int
    operator: str | None = None
    mcc: str | None = None
    mnc: str | None = None
    act: int | None = None

    @property
    def access_tech(self) -> AccessTech | None:
        return None if self.act is None else ACT.get(self.act)


def split_plmn(code: str, *, prefix: str = "+COPS:", raw: str = "") -> tuple[str, str]:
    """"310260" -> ("310", "260"); "310 26" and "310-26" too. MNC stays a string (leading 0)."""
    digits = re.sub(r"[\s-]", "", code)
    if not re.fullmatch(r"\d{5,6}", digits) or digits[:3] == "000":
        raise bad(prefix, raw or code)
    return digits[:3], digits[3:]


def parse_cops(line: str) -> Cops:
    """+COPS: <mode>[,<format>,<oper>[,<AcT>]] (27.007 7.3). Format 0/1 gives the name,
    2 the numeric PLMN."""
    p = payload_of(line, "+COPS:")
    f = fields(p)
    mode = opt_int(f[0], prefix="+COPS:", raw=line)
    if mode is None:
        raise bad("+COPS:", line)
    if len(f) < 3:
        return Cops(mode=mode)
    fmt = opt_int(f[1], prefix="+COPS:", raw=line)
    oper = f[2].strip()
    act = opt_int(f[3], prefix="+COPS:", raw=line) if len(f) > 3 else None
    if fmt == 2:
        mcc, mnc = split_plmn(oper, raw=line)
        return Cops(mode=mode, mcc=mcc, mnc=mnc, act=act)
    return Cops(mode=mode, operator=oper or None, act=act)


# -- SIM ---------------------------------------------------------------------------------

_CPIN: dict[str, SimState] = {
    "READY": SimState.READY,
    "SIM PIN": SimState.PIN_REQUIRED,
    "SIM PUK": SimState.PUK_REQUIRED,
    "SIM PIN2": SimState.READY,  # PIN2 guards only fixed dialling; the SIM works
    "SIM PUK2": SimState.READY,
    "NOT READY": SimState.NOT_READY,  # Quectel's unsolicited report on removal/initialising
    "NOT INSERTED": SimState.ABSENT,
}

#: +CME ERROR codes (27.007 9.2.1) that answer AT+CPIN? when the SIM is not usable.
CME_SIM_STATE: dict[int, SimState] = {
    5: SimState.LOCKED,
    10: SimState.ABSENT,
    11: SimState.PIN_REQUIRED,
    12: SimState.PUK_REQUIRED,
    13: SimState.FAILED,
    14: SimState.NOT_READY,
    15: SimState.FAILED,
}


def parse_cpin(line: str) -> SimState:
    """+CPIN: <code> (27.007 8.3). PH-* codes (phone or network locks) are LOCKED."""
    code = unquote(payload_of(line, "+CPIN:")).upper()
    if code in _CPIN:
        return _CPIN[code]
    if code.startswith("PH-") or code.startswith("PH "):
        return SimState.LOCKED
    raise bad("+CPIN:", line)


_ICCID_PREFIXES = ("+CCID:", "+ICCID:", "+QCCID:", "!ICCID:", "#CCID:", "ICCID:", "+CICCID:")


def parse_iccid(text: str) -> str:
    """The ICCID from +CCID/+ICCID/+QCCID/!ICCID/#CCID or a bare line, as printed on the card.

    As ModemManager's mm_3gpp_parse_iccid: digits and F only; "98..." is the raw EF_ICCID
    with each pair of BCD nibbles swapped, "89..." is already in order (ISO/IEC 7812 major
    industry identifier 89); a trailing F pads a 19-digit ICCID. Unlike ModemManager we also
    take an unpadded 19-digit one (Telit #CCID prints it so).
    """
    line = ""
    for candidate in text.splitlines() or [text]:
        s = candidate.strip()
        if not s:
            continue
        if s.upper().startswith(_ICCID_PREFIXES):
            line = s.split(":", 1)[1]
            break
        if not line and re.fullmatch(r'"?[0-9A-Fa-f]{18,20}"?', s):
            line = s
    digits = unquote(line.strip()).strip().upper()
    if not re.fullmatch(r"[0-9F]{18,20}", digits):
        raise bad("ICCID", text)
    if digits.startswith("98") and len(digits) == 20:
        digits = "".join(digits[i + 1] + digits[i] for i in range(0, 20, 2))
    if not digits.startswith("89"):
        raise bad("ICCID", text)
    digits = digits.rstrip("F")
    if "F" in digits or not 18 <= len(digits) <= 20:
        raise bad("ICCID", text)
    return digits


def parse_imei(lines: list[str] | tuple[str, ...] | str) -> str:
    """+CGSN (27.007 5.4): the IMEI, bare or as "+CGSN: <sn>", quoted or not."""
    seq = lines.splitlines() if isinstance(lines, str) else list(lines)
    for line in seq:
        s = line.strip()
        if s.upper().startswith(("+CGSN:", "+GSN:")):
            s = s.split(":", 1)[1]
        s = unquote(s.strip())
        if re.fullmatch(r"\d{14,16}", s):
            return s
    raise bad("+CGSN:", "\n".join(seq))


def parse_info_text(lines: list[str] | tuple[str, ...] | str, prefix: str) -> str:
    """+CGMI/+CGMM/+CGMR (27.007 5.1-5.3): free text, bare or behind its prefix."""
    seq = lines.splitlines() if isinstance(lines, str) else list(lines)
    for line in seq:
        s = line.strip()
        if not s:
            continue
        if s.upper().startswith(prefix.upper()):
            s = s[len(prefix) :].strip()
        for label in ("Revision:", "Manufacturer:", "Model:"):
            if s.startswith(label):
                s = s[len(label) :].strip()
        s = unquote(s)
        if s:
            return s
    raise bad(prefix, "\n".join(seq), what="had no")


def parse_cfun(line: str) -> int:
    """+CFUN: <fun> (27.007 8.2): 1 full, 0 minimum, 4 radio off (airplane)."""
    f = fields(payload_of(line, "+CFUN:"))
    n = opt_int(f[0], prefix="+CFUN:", raw=line)
    if n is None:
        raise bad("+CFUN:", line)
    return n


# -- clock -------------------------------------------------------------------------------

_CCLK_RE = re.compile(
    r"^(\d{2}|\d{4})/(\d{1,2})/(\d{1,2}),(\d{1,2}):(\d{2}):(\d{2})(?:([+-])(\d{1,2}))?"
)


def parse_clock_string(value: str, *, prefix: str = "+CCLK:", raw: str = "") -> ModemTime:
    """"yy/MM/dd,hh:mm:ss±zz" (27.007 8.15): local time, zz the offset from GMT in quarter
    hours. Returns UTC. A four-digit year is taken too (+QLTS, +CTZE). Whether the time is
    plausible (a modem never set by the network says 1980) is for the caller to judge."""
    m = _CCLK_RE.match(unquote(value.strip()))
    if m is None:
        raise bad(prefix, raw or value)
    y, mo, d, hh, mm, ss = (int(m.group(i)) for i in range(1, 7))
    if y < 100:  # two digits: 70-99 are the 1970s-90s epochs a never-set clock starts from
        y += 1900 if y >= 70 else 2000
    if not (1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1]):
        raise bad(prefix, raw or value)
    if hh > 23 or mm > 59 or ss > 60:
        raise bad(prefix, raw or value)
    tz_s: int | None = None
    if m.group(7):
        tz_s = int(m.group(8)) * 15 * 60 * (-1 if m.group(7) == "-" else 1)
    local = calendar.timegm((y, mo, d, hh, mm, min(ss, 59), 0, 0, 0))
    return ModemTime(utc_s=float(local - (tz_s or 0)), tz_offset_s=tz_s, source="cclk")


def parse_cclk(line: str) -> ModemTime:
    return parse_clock_string(payload_of(line, "+CCLK:"), raw=line)

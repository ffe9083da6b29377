"""Quectel (EC25, EG25-G, RM500Q ...): only what differs from 3GPP TS 27.007.

- AT+QENG="servingcell": one line for LTE, WCDMA and NR5G-SA; three for NR5G-NSA (EN-DC):
  a "servingcell" line with the state, then an "LTE" line (the anchor) and an "NR5G-NSA"
  line. Field order from Quectel's EC2x/EG2x QuecCell manual and the RG50xQ/RM5xxQ AT
  manual, cross-checked with ROOter's quecteldata.sh; see docs/modems.md.
- LTE SINR in QENG and +QCSQ is "1/5 dB, 0-250 = -20..+30 dB" on EC2x/BG96 (Quectel's
  manuals, confirmed by Quectel support on forums.quectel.com); the profile's
  `qeng_lte_sinr` setting says which encoding a model uses ("fifth_db" or "db").
- +QGPSLOC=2 for GNSS (decimal degrees), +QLTS=1 for the network (NITZ) time in GMT.
- Reset: AT+CFUN=1,1, then the module prints RDY when it is up again.
"""

from __future__ import annotations

import calendar
import dataclasses
import re
from dataclasses import dataclass

from drivers.modem.at import parsers as p
from drivers.modem.at.driver import VendorPlugin
from drivers.modem.at.protocol import AtCommander, AtError
from drivers.modem.profiles import ModemProfile
from drivers.types import AccessTech, GnssFix, ModemEvent, ModemEventKind, ModemTime, SignalReport

_LTE_TAGS = {"LTE": AccessTech.LTE, "CAT-M": AccessTech.LTE_CAT_M, "CAT-NB": AccessTech.NB_IOT}


@dataclass(frozen=True)
class Qeng:
    state: str | None = None
    access_tech: AccessTech | None = None
    mcc: str | None = None
    mnc: str | None = None
    cell_id: int | None = None
    pci: int | None = None
    earfcn: int | None = None
    band: str | None = None
    tac: int | None = None
    rsrp_dbm: int | None = None
    rsrq_db: float | None = None
    rssi_dbm: int | None = None
    sinr_db: float | None = None
    nr_rsrp_dbm: int | None = None
    nr_rsrq_db: float | None = None
    nr_sinr_db: float | None = None
    nr_band: str | None = None


def sinr_db(raw: str, encoding: str, *, prefix: str, line: str) -> float | None:
    """"fifth_db": 0..250 means -20..+30 dB in 1/5 dB; "db": already dB."""
    if encoding == "fifth_db":
        v = p.opt_int(raw, prefix=prefix, raw=line)
        if v is None or not 0 <= v <= 250:
            return None
        return round(v / 5 - 20, 1)
    f = p.opt_float(raw, prefix=prefix, raw=line)
    return f if f is None or -30 <= f <= 60 else None


def _in(v: int | float | None, lo: float, hi: float) -> bool:
    return v is not None and lo <= v <= hi


def _rsrp(raw: str, prefix: str, line: str) -> int | None:
    v = p.opt_int(raw, prefix=prefix, raw=line)
    return v if _in(v, -156, -31) else None


def _rsrq(raw: str, prefix: str, line: str) -> float | None:
    v = p.opt_float(raw, prefix=prefix, raw=line)
    return v if _in(v, -43, 20) else None


def _rssi(raw: str, prefix: str, line: str) -> int | None:
    v = p.opt_int(raw, prefix=prefix, raw=line)
    return v if _in(v, -130, 0) else None


def _mnc(raw: str) -> str | None:
    v = p.unquote(raw).strip()
    return v if v.isdigit() else None


def _lte(f: list[str], line: str, sinr_encoding: str) -> Qeng:
    """<is_tdd>,<MCC>,<MNC>,<cellID>,<PCID>,<earfcn>,<band>,<UL_bw>,<DL_bw>,<TAC>,<RSRP>,
    <RSRQ>,<RSSI>,<SINR>[,<CQI>,<tx_power>],<srxlev> (the fields after the "LTE" tag)."""
    pre = "+QENG:"
    if len(f) < 14:
        raise p.bad(pre, line)
    band = p.opt_int(f[6], prefix=pre, raw=line)
    return Qeng(
        mcc=_mnc(f[1]),
        mnc=_mnc(f[2]),
        cell_id=p.opt_hex(f[3], prefix=pre, raw=line),
        pci=p.opt_int(f[4], prefix=pre, raw=line),
        earfcn=p.opt_int(f[5], prefix=pre, raw=line),
        band=None if band is None else f"B{band}",
        tac=p.opt_hex(f[9], prefix=pre, raw=line, area=True),
        rsrp_dbm=_rsrp(f[10], pre, line),
        rsrq_db=_rsrq(f[11], pre, line),
        rssi_dbm=_rssi(f[12], pre, line),
        sinr_db=sinr_db(f[13], sinr_encoding, prefix=pre, line=line),
    )


def parse_qeng_servingcell(
    lines: list[str] | tuple[str, ...], *, lte_sinr: str = "fifth_db", nr_sinr: str = "db"
) -> Qeng:
    """AT+QENG="servingcell" -> one Qeng; cell fields None while searching (SEARCH/LIMSRV)."""
    qeng = [ln.strip() for ln in lines if ln.strip().upper().startswith("+QENG:")]
    if not qeng:
        raise p.bad("+QENG:", "\n".join(lines), what="had no")
    raw = "\n".join(qeng)
    pre = "+QENG:"
    head = p.fields(p.payload_of(qeng[0], pre))
    if head[0].lower() != "servingcell" or len(head) < 2:
        raise p.bad(pre, raw)
    state = head[1].upper() or None
    if len(head) == 2:
        result = Qeng(state=state)
        for line in qeng[1:]:
            f = p.fields(p.payload_of(line, pre))
            tag = f[0].upper()
            if tag in _LTE_TAGS:
                result = dataclasses.replace(
                    _lte(f[1:], line, lte_sinr), state=state, access_tech=_LTE_TAGS[tag]
                )
            elif tag == "NR5G-NSA":
                # "NR5G-NSA",<MCC>,<MNC>,<PCID>,<RSRP>,<SINR>,<RSRQ>,<ARFCN>,<band>,<bw>,<scs>
                if len(f) < 7:
                    raise p.bad(pre, raw)
                band = p.opt_int(f[8], prefix=pre, raw=line) if len(f) > 8 else None
                result = dataclasses.replace(
                    result,
                    access_tech=AccessTech.NR5G_NSA,
                    nr_rsrp_dbm=_rsrp(f[4], pre, line),
                    nr_sinr_db=sinr_db(f[5], nr_sinr, prefix=pre, line=line),
                    nr_rsrq_db=_rsrq(f[6], pre, line),
                    nr_band=None if band is None else f"n{band}",
                )
        return result
    tag = head[2].upper()
    if tag in _LTE_TAGS:
        return dataclasses.replace(
            _lte(head[3:], qeng[0], lte_sinr), state=state, access_tech=_LTE_TAGS[tag]
        )
    if tag == "NR5G-SA":
        # <duplex>,<MCC>,<MNC>,<cellID>,<PCID>,<TAC>,<ARFCN>,<band>,<bw>,<RSRP>,<RSRQ>,<SINR>...
        f = head[3:]
        if len(f) < 12:
            raise p.bad(pre, raw)
        band = p.opt_int(f[7], prefix=pre, raw=raw)
        return Qeng(
            state=state,
            access_tech=AccessTech.NR5G_SA,
            mcc=_mnc(f[1]),
            mnc=_mnc(f[2]),
            cell_id=p.opt_hex(f[3], prefix=pre, raw=raw),
            pci=p.opt_int(f[4], prefix=pre, raw=raw),
            tac=p.opt_hex(f[5], prefix=pre, raw=raw, area=True),
            earfcn=p.opt_int(f[6], prefix=pre, raw=raw),
            band=None if band is None else f"n{band}",
            rsrp_dbm=_rsrp(f[9], pre, raw),
            rsrq_db=_rsrq(f[10], pre, raw),
            sinr_db=sinr_db(f[11], nr_sinr, prefix=pre, line=raw),
        )
    if tag == "WCDMA":
        # <MCC>,<MNC>,<LAC>,<cellID>,<uarfcn>,<PSC>,<RAC>,<RSCP>,<ecio>...
        f = head[3:]
        if len(f) < 8:
            raise p.bad(pre, raw)
        return Qeng(
            state=state,
            access_tech=AccessTech.UMTS,
            mcc=_mnc(f[0]),
            mnc=_mnc(f[1]),
            tac=p.opt_hex(f[2], prefix=pre, raw=raw, area=True),
            cell_id=p.opt_hex(f[3], prefix=pre, raw=raw),
        )
    if tag == "GSM":
        f = head[3:]
        if len(f) < 4:
            raise p.bad(pre, raw)
        return Qeng(
            state=state,
            access_tech=AccessTech.GSM,
            mcc=_mnc(f[0]),
            mnc=_mnc(f[1]),
            tac=p.opt_hex(f[2], prefix=pre, raw=raw, area=True),
            cell_id=p.opt_hex(f[3], prefix=pre, raw=raw),
        )
    return Qeng(state=state)


@dataclass(frozen=True)
class Qcsq:
    sysmode: str
    rssi_dbm: int | None = None
    rsrp_dbm: int | None = None
    sinr_db: float | None = None
    rsrq_db: float | None = None


def parse_qcsq(line: str, *, sinr: str = "fifth_db") -> Qcsq:
    """+QCSQ: "LTE",<rssi>,<rsrp>,<sinr>,<rsrq> (also CAT-M1/CAT-NB1), "NOSERVICE", "GSM",
    <rssi>, "WCDMA",<rssi>,<rscp>,<ecio>. EG21-G prints LTE RSSI as a positive magnitude
    (Quectel support, forums.quectel.com topic 54722): a positive RSSI is negated."""
    pre = "+QCSQ:"
    f = p.fields(p.payload_of(line, pre))
    mode = f[0].upper()
    if mode in ("LTE", "CAT-M1", "CAT-NB1", "EMTC", "NBIOT"):
        if len(f) < 5:
            raise p.bad(pre, line)
        rssi = p.opt_int(f[1], prefix=pre, raw=line)
        if rssi is not None and rssi > 0:
            rssi = -rssi
        return Qcsq(
            sysmode=mode,
            rssi_dbm=rssi if _in(rssi, -130, 0) else None,
            rsrp_dbm=_rsrp(f[2], pre, line),
            sinr_db=sinr_db(f[3], sinr, prefix=pre, line=line),
            rsrq_db=_rsrq(f[4], pre, line),
        )
    if mode in ("GSM", "WCDMA", "TDSCDMA", "CDMA", "HDR"):
        return Qcsq(sysmode=mode, rssi_dbm=_rssi(f[1], pre, line) if len(f) > 1 else None)
    if mode == "NOSERVICE":
        return Qcsq(sysmode=mode)
    raise p.bad(pre, line)


_QLTS_RE = re.compile(r"^(\d{4}/\d{1,2}/\d{1,2},\d{1,2}:\d{2}:\d{2})([+-]\d{1,2})(?:,(\d))?$")


def parse_qlts_gmt(line: str) -> ModemTime | None:
    """+QLTS: "yyyy/MM/dd,hh:mm:ss±zz,dst" from AT+QLTS=1: the GMT time of the last network
    time synchronisation (NITZ) and its zone in quarter hours; "" when there was none."""
    value = p.unquote(p.payload_of(line, "+QLTS:"))
    if not value:
        return None
    m = _QLTS_RE.match(value)
    if m is None:
        raise p.bad("+QLTS:", line)
    gmt = p.parse_clock_string(m.group(1) + "+00", prefix="+QLTS:", raw=line)
    return ModemTime(utc_s=gmt.utc_s, tz_offset_s=int(m.group(2)) * 900, source="nitz")


def parse_qgpsloc(line: str) -> GnssFix:
    """+QGPSLOC: <UTC>,<lat>,<lon>,<HDOP>,<alt>,<fix>,<COG>,<spkm>,<spkn>,<date>,<nsat>
    (AT+QGPSLOC=2: degrees as decimals; UTC hhmmss.sss, date ddmmyy)."""
    pre = "+QGPSLOC:"
    f = p.fields(p.payload_of(line, pre))
    if len(f) < 10:
        raise p.bad(pre, line)
    try:
        lat, lon, hdop = float(f[1]), float(f[2]), float(f[3])
    except ValueError as exc:
        raise p.bad(pre, line) from exc
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise p.bad(pre, line)
    utc_s = None
    t, d = f[0], f[9]
    if re.fullmatch(r"\d{6}(\.\d+)?", t) and re.fullmatch(r"\d{6}", d):
        utc_s = float(
            calendar.timegm(
                (2000 + int(d[4:6]), int(d[2:4]), int(d[0:2]), int(t[0:2]), int(t[2:4]),
                 int(t[4:6]), 0, 0, 0)
            )
        )
    return GnssFix(lat_deg=lat, lon_deg=lon, accuracy_m=round(hdop * 5.0, 1), utc_s=utc_s)


class QuectelPlugin(VendorPlugin):
    name = "quectel"
    urc_prefixes = ("RDY", "+QIND:", "+QUSIM:", "+QGPSURC:", "POWERED DOWN", "+QSIMSTAT:")
    #: +CTZU=1: let NITZ set the module's clock, so +CCLK is network time (EC25 manual 6.x).
    init_commands = ("AT+CTZU=1",)
    iccid_commands = ("AT+QCCID", "AT+CCID")
    reset_command = "AT+CFUN=1,1"
    ready_urc = "RDY"
    boot_timeout_s = 60.0

    def __init__(self, profile: ModemProfile | None = None) -> None:
        super().__init__(profile)
        self.lte_sinr = profile.setting("qeng_lte_sinr", "fifth_db") if profile else "fifth_db"
        self.nr_sinr = profile.setting("qeng_nr_sinr", "db") if profile else "db"
        self.has_gnss = bool(profile.setting("gnss", True)) if profile else True

    async def enrich(self, at: AtCommander, report: SignalReport) -> SignalReport:
        try:
            r = await at.command('AT+QENG="servingcell"')
        except AtError:
            return await self._qcsq(at, report)
        q = parse_qeng_servingcell(r.lines, lte_sinr=self.lte_sinr, nr_sinr=self.nr_sinr)
        if q.access_tech is None:
            return report
        tech = q.access_tech
        cell = report.cell_id if report.cell_id is not None else q.cell_id
        return dataclasses.replace(
            report,
            access_tech=tech,
            rsrp_dbm=q.rsrp_dbm if q.rsrp_dbm is not None else report.rsrp_dbm,
            rsrq_db=q.rsrq_db if q.rsrq_db is not None else report.rsrq_db,
            rssi_dbm=q.rssi_dbm if q.rssi_dbm is not None else report.rssi_dbm,
            sinr_db=q.sinr_db,
            band=q.band,
            pci=q.pci,
            earfcn=q.earfcn,
            tac=report.tac if report.tac is not None else q.tac,
            cell_id=cell,
            enb_id=p.enb_id_of(cell, tech),
            mcc=report.mcc or q.mcc,
            mnc=report.mnc or q.mnc,
            nr_rsrp_dbm=q.nr_rsrp_dbm,
            nr_rsrq_db=q.nr_rsrq_db,
            nr_sinr_db=q.nr_sinr_db,
            nr_band=q.nr_band,
        )

    async def _qcsq(self, at: AtCommander, report: SignalReport) -> SignalReport:
        try:
            r = await at.command("AT+QCSQ")
        except AtError:
            return report
        q = parse_qcsq(p.find_line(r.lines, "+QCSQ:"), sinr=self.lte_sinr)
        return dataclasses.replace(
            report,
            rssi_dbm=q.rssi_dbm if q.rssi_dbm is not None else report.rssi_dbm,
            rsrp_dbm=q.rsrp_dbm if q.rsrp_dbm is not None else report.rsrp_dbm,
            rsrq_db=q.rsrq_db if q.rsrq_db is not None else report.rsrq_db,
            sinr_db=q.sinr_db,
        )

    async def network_time(self, at: AtCommander) -> ModemTime | None:
        try:
            r = await at.command("AT+QLTS=1")
            t = parse_qlts_gmt(p.find_line(r.lines, "+QLTS:"))
            if t is not None:
                return t
        except AtError:
            pass
        return await super().network_time(at)

    async def gnss_fix(self, at: AtCommander) -> GnssFix | None:
        """A fix when there is one. CME 516 "not fixed now"; 505 "session not active", in
        which case the engine is started (AT+QGPS=1) for the next call."""
        if not self.has_gnss:
            return None
        try:
            r = await at.command("AT+QGPSLOC=2")
        except AtError as exc:
            if exc.code == 505:
                try:
                    await at.command("AT+QGPS=1")
                except AtError:
                    self.has_gnss = False
            return None
        return parse_qgpsloc(p.find_line(r.lines, "+QGPSLOC:"))

    def event_for(self, line: str) -> ModemEvent | None:
        upper = line.strip().upper()
        if upper == "POWERED DOWN":
            return ModemEvent(ModemEventKind.REBOOTED, raw=line)
        return super().event_for(line)

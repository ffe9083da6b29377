"""Telit (LE910C*, LM960 ...): only what differs from 3GPP TS 27.007.

- AT#RFSTS on LTE: #RFSTS: <PLMN>,<EARFCN>,<RSRP>,<RSSI>,<RSRQ>,<TAC>,<RAC>,[<TXPWR>],<DRX>,
  <MM>,<RRC>,<CID>,<IMSI>,[<NetNameAsc>],<SD>,<ABND>[,<SINR>]; PLMN as "310 410", TAC and CID
  in hex, SINR (where printed) in 1/5 dB from -20 dB. Per Telit's LE910 AT command reference,
  cross-checked with ROOter's telitdata.sh; see docs/modems.md. Other RATs print a different
  layout: only the PLMN is taken then.
- ICCID: AT+ICCID (or AT#CCID); unpadded 19 digits on some cards.
- Reset: AT#REBOOT; no ready line, the USB device comes back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from drivers.modem.at import parsers as p
from drivers.modem.at.driver import VendorPlugin
from drivers.modem.at.protocol import AtCommander, AtError
from drivers.modem.quectel import sinr_db
from drivers.types import AccessTech, ModemEvent, ModemEventKind, SignalReport, SimState


@dataclass(frozen=True)
class Rfsts:
    mcc: str | None = None
    mnc: str | None = None
    lte: bool = False
    earfcn: int | None = None
    rsrp_dbm: int | None = None
    rssi_dbm: int | None = None
    rsrq_db: float | None = None
    tac: int | None = None
    cell_id: int | None = None
    band: str | None = None
    sinr_db: float | None = None


def parse_rfsts(line: str) -> Rfsts:
    pre = "#RFSTS:"
    f = p.fields(p.payload_of(line, pre))
    if not f or not f[0].strip():
        raise p.bad(pre, line)
    mcc, mnc = p.split_plmn(f[0], prefix=pre, raw=line)
    if len(f) < 16:
        return Rfsts(mcc=mcc, mnc=mnc)
    band = p.opt_int(f[15], prefix=pre, raw=line)
    return Rfsts(
        mcc=mcc,
        mnc=mnc,
        lte=True,
        earfcn=p.opt_int(f[1], prefix=pre, raw=line),
        rsrp_dbm=p.opt_int(f[2], prefix=pre, raw=line),
        rssi_dbm=p.opt_int(f[3], prefix=pre, raw=line),
        rsrq_db=p.opt_float(f[4], prefix=pre, raw=line),
        tac=p.opt_hex(f[5], prefix=pre, raw=line, area=True),
        cell_id=p.opt_hex(f[11], prefix=pre, raw=line),
        band=None if band is None else f"B{band}",
        sinr_db=sinr_db(f[16], "fifth_db", prefix=pre, line=line) if len(f) > 16 else None,
    )


class TelitPlugin(VendorPlugin):
    name = "telit"
    urc_prefixes = ("#QSS:",)
    #: #QSS=1: report SIM insertion/removal as "#QSS: <status>" (LE910 AT reference).
    init_commands = ("AT#QSS=1",)
    iccid_commands = ("AT+ICCID", "AT#CCID", "AT+CCID")
    reset_command = "AT#REBOOT"
    ready_urc = None
    boot_timeout_s = 90.0

    async def enrich(self, at: AtCommander, report: SignalReport) -> SignalReport:
        try:
            r = await at.command("AT#RFSTS", timeout_s=10.0)
        except AtError:
            return report
        rf = parse_rfsts(p.find_line(r.lines, "#RFSTS:"))
        if not rf.lte:
            return dataclasses.replace(report, mcc=report.mcc or rf.mcc, mnc=report.mnc or rf.mnc)
        tech = report.access_tech or AccessTech.LTE
        cell = report.cell_id if report.cell_id is not None else rf.cell_id
        return dataclasses.replace(
            report,
            access_tech=tech,
            rsrp_dbm=rf.rsrp_dbm if rf.rsrp_dbm is not None else report.rsrp_dbm,
            rsrq_db=rf.rsrq_db if rf.rsrq_db is not None else report.rsrq_db,
            rssi_dbm=rf.rssi_dbm if rf.rssi_dbm is not None else report.rssi_dbm,
            sinr_db=rf.sinr_db,
            band=rf.band,
            earfcn=rf.earfcn,
            tac=report.tac if report.tac is not None else rf.tac,
            cell_id=cell,
            enb_id=p.enb_id_of(cell, tech),
            mcc=report.mcc or rf.mcc,
            mnc=report.mnc or rf.mnc,
        )

    def event_for(self, line: str) -> ModemEvent | None:
        s = line.strip()
        if s.upper().startswith("#QSS:"):
            # 0 not inserted, 1 inserted, 2 inserted and PIN unlocked, 3 ready (SMS, phonebook)
            status = p.fields(s.split(":", 1)[1])[0]
            state = {"0": SimState.ABSENT, "3": SimState.READY}.get(status, SimState.NOT_READY)
            return ModemEvent(ModemEventKind.SIM, sim_state=state, raw=line)
        return super().event_for(line)

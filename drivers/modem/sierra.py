"""Sierra Wireless (EM7455, MC7455 ...): only what differs from 3GPP TS 27.007.

- AT!GSTATUS? prints "Key: value" pairs, two to a line, separated by tabs, e.g.
  "PCC RxM RSSI:  -73<TAB><TAB>RSRP (dBm):  -103" and "TAC:  2D1F (11551)"; "--" means
  none (Tx power while idle). Layout per Sierra's MC/EM74xx AT command reference and the
  parsers in ROOter (sierradata.sh) and mofi_snmp.sh; see docs/modems.md.
- The ICCID comes from AT!ICCID? (already in card order; ModemManager's Sierra plugin).
- Reset: AT!RESET; the USB device drops off and comes back, no ready line is printed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from drivers.modem.at import parsers as p
from drivers.modem.at.driver import VendorPlugin
from drivers.modem.at.protocol import AtCommander, AtError
from drivers.types import AccessTech, SignalReport

_KEY_RE = re.compile(r"([A-Za-z][A-Za-z0-9 ()/._-]*?):\s*(.*?)\s*(?=\t|\s{2,}[A-Z][^:\t]{1,24}:|$)")

_SYSTEM_MODE = {
    "LTE": AccessTech.LTE,
    "ENDC": AccessTech.NR5G_NSA,
    "NR5G": AccessTech.NR5G_SA,
    "WCDMA": AccessTech.UMTS,
    "HSPA": AccessTech.UMTS,
    "GSM": AccessTech.GSM,
}


@dataclass(frozen=True)
class Gstatus:
    system_mode: str | None = None
    access_tech: AccessTech | None = None
    band: str | None = None
    earfcn: int | None = None
    rssi_dbm: int | None = None
    rsrp_dbm: int | None = None
    rsrq_db: float | None = None
    sinr_db: float | None = None
    tac: int | None = None
    cell_id: int | None = None
    emm_state: str | None = None
    mode: str | None = None


def gstatus_pairs(lines: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """All "Key: value" pairs in order (keys repeat: RSRP (dBm) is on the RxM and RxD lines)."""
    pairs: list[tuple[str, str]] = []
    for line in lines:
        s = line.strip()
        if s.upper().startswith("!GSTATUS:"):
            s = s[len("!GSTATUS:") :]
        for chunk in re.split(r"\t+", s):
            for m in _KEY_RE.finditer(chunk.strip()):
                key, value = m.group(1).strip(), m.group(2).strip()
                if key:
                    pairs.append((key, value))
    return pairs


def _code(value: str, *, area: bool, raw: str) -> int | None:
    """"2D1F (11551)": the hex before the decimal in brackets."""
    token = value.split("(")[0].strip()
    return p.opt_hex(token, prefix="!GSTATUS:", raw=raw, area=area)


def parse_gstatus(lines: list[str] | tuple[str, ...]) -> Gstatus:
    raw = "\n".join(lines)
    pairs = gstatus_pairs(lines)
    if not pairs:
        raise p.bad("!GSTATUS:", raw, what="had no")
    first: dict[str, str] = {}
    for key, value in pairs:
        first.setdefault(key.lower(), value)

    def num(key: str) -> str | None:
        v = first.get(key)
        return None if v is None else v.split()[0] if v.split() else ""

    mode = (first.get("system mode") or "").split()[0:1]
    system_mode = mode[0].upper() if mode else None
    band = first.get("lte band") or first.get("nr5g band")
    band = band.split()[0] if band and band.split() and band.split()[0] not in ("--", "-") else None
    if band and band[0] in "bB" and band[1:].isdigit():
        band = "B" + band[1:]
    elif band and band[0] in "nN" and band[1:].isdigit():
        band = "n" + band[1:]
    rssi_raw = num("pcc rxm rssi")
    rsrp_raw = num("pcc rxm rsrp") or num("rsrp (dbm)")
    rsrq_raw = num("rsrq (db)")
    sinr_raw = num("sinr (db)")
    earfcn_raw = num("lte rx chan")
    return Gstatus(
        system_mode=system_mode,
        access_tech=_SYSTEM_MODE.get(system_mode or ""),
        band=band,
        earfcn=None if earfcn_raw is None else p.opt_int(earfcn_raw, prefix="!GSTATUS:", raw=raw),
        rssi_dbm=None if rssi_raw is None else p.opt_int(rssi_raw, prefix="!GSTATUS:", raw=raw),
        rsrp_dbm=None if rsrp_raw is None else p.opt_int(rsrp_raw, prefix="!GSTATUS:", raw=raw),
        rsrq_db=None if rsrq_raw is None else p.opt_float(rsrq_raw, prefix="!GSTATUS:", raw=raw),
        sinr_db=None if sinr_raw is None else p.opt_float(sinr_raw, prefix="!GSTATUS:", raw=raw),
        tac=None if "tac" not in first else _code(first["tac"], area=True, raw=raw),
        cell_id=None if "cell id" not in first else _code(first["cell id"], area=False, raw=raw),
        emm_state=first.get("emm state"),
        mode=first.get("mode"),
    )


class SierraPlugin(VendorPlugin):
    name = "sierra"
    iccid_commands = ("AT!ICCID?", "AT+ICCID", "AT+CCID")
    #: AT!RESET restarts the module (Sierra AT command reference, "!RESET").
    reset_command = "AT!RESET"
    ready_urc = None
    boot_timeout_s = 90.0

    async def enrich(self, at: AtCommander, report: SignalReport) -> SignalReport:
        try:
            r = await at.command("AT!GSTATUS?", timeout_s=10.0)
        except AtError:
            return report
        g = parse_gstatus(r.lines)
        tech = g.access_tech or report.access_tech
        cell = report.cell_id if report.cell_id is not None else g.cell_id
        return dataclasses.replace(
            report,
            access_tech=tech,
            rssi_dbm=g.rssi_dbm if g.rssi_dbm is not None else report.rssi_dbm,
            rsrp_dbm=g.rsrp_dbm if g.rsrp_dbm is not None else report.rsrp_dbm,
            rsrq_db=g.rsrq_db if g.rsrq_db is not None else report.rsrq_db,
            sinr_db=g.sinr_db,
            band=g.band,
            earfcn=g.earfcn,
            tac=report.tac if report.tac is not None else g.tac,
            cell_id=cell,
            enb_id=p.enb_id_of(cell, tech),
        )

"""A built-in LTE modem (Chateau, LtAP) for the RouterOS simulator: /interface/lte.

Installed only on models with `has_lte` (the Chateau-LTE model): the menu lists lte1 and
answers the three commands the agent's routeros-lte driver uses:

- v7 `monitor numbers=lte1 once`: one row with the v7 field names (status, pin-status,
  registration-status, functionality, manufacturer, model, revision, current-operator,
  current-cellid, enb-id, sector-id, phy-cellid, data-class, primary-band "B3@20Mhz
  earfcn: 1300 phy-cellid: 480", imei, iccid, rssi/rsrp/rsrq/sinr with units), as in
  help.mikrotik.com "LTE" (monitor example). 6.49 has no `monitor` ("no such command"):
- v6 `info numbers=lte1 once`: the v6 names (registration-status, current-operator as the
  numeric PLMN, lac, current-cellid, earfcn "1300 (band 3, bandwidth 20Mhz)",
  access-technology "Evolved 3G (LTE)", uicc, pin-status, functionality), as in a v6
  `info once` capture (docs/modems.md).
- `at-chat numbers=lte1 input=AT...`: the modem's reply in `=output=` (a Quectel EG12:
  +QENG="servingcell", +COPS?, +QLTS=1, +CCLK?, +CFUN=1,1 -> OK; anything else ERROR).

The side channel (RouterOSSim.set_lte) changes the cell, PLMN and signal; a disabled lte1
traps "interface is disabled" like the real one does for monitor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .db import NO_SUCH_ITEM, ConfigDB, Trap
from .menus import READ, MenuSpec, P, Prop, Tree, _props
from .profiles import Profile

if TYPE_CHECKING:
    from .server import Command

PATH = "/interface/lte"


def install(tree: Tree, profile: Profile) -> None:
    """Add /interface/lte to the tree (before the database is built from it)."""
    live = "monitor" if profile.v7 else "info"
    tree.menus[PATH] = MenuSpec(PATH, _props(
        P("name"), P("mtu", "int", "1500"), P("apn-profiles", default="default"),
        P("allow-roaming", "bool", "true"), P("band", default=""),
        Prop("running", "bool", "true", read_only=True), P("comment"),
        P("disabled", "bool", "false"),
    ), READ | {"set", "enable", "disable", live, "at-chat"}, key="name")


def seed(db: ConfigDB) -> None:
    db.insert(PATH, {"name": "lte1"}, permanent=True)


@dataclass
class LteModem:
    """What the simulated modem sees; change it through RouterOSSim.set_lte."""

    manufacturer: str = "Quectel"
    model: str = "EG12-EA"
    revision: str = "EG12EAPAR01A12M4G"
    imei: str = "869816040981234"
    iccid: str = "89012608220123456789"
    operator: str = "T-Mobile"
    mcc: str = "310"
    mnc: str = "260"
    tac: int = 0x2B10
    cell_id: int = 0x0A1B2C03  # eNB 662316, sector 3
    pci: int = 480
    earfcn: int = 1300
    band: int = 3
    rssi_dbm: int = -68
    rsrp_dbm: int = -97
    rsrq_db: int = -9
    sinr_db: int = 6
    registered: bool = True
    network_utc_s: float | None = None
    extra_at: dict[str, str] = field(default_factory=dict)

    def monitor_v7(self) -> dict[str, str]:
        row = {
            "status": "connected" if self.registered else "searching...",
            "pin-status": "ok", "functionality": "full",
            "registration-status": "registered" if self.registered else "searching",
            "manufacturer": self.manufacturer, "model": self.model, "revision": self.revision,
            "current-operator": self.operator, "data-class": "LTE",
            "imei": self.imei, "iccid": self.iccid,
        }
        if self.registered:
            row.update({
                "current-cellid": str(self.cell_id), "enb-id": str(self.cell_id >> 8),
                "sector-id": str(self.cell_id & 0xFF), "phy-cellid": str(self.pci),
                "primary-band": f"B{self.band}@20Mhz earfcn: {self.earfcn} phy-cellid: {self.pci}",
                "rssi": f"{self.rssi_dbm}dBm", "rsrp": f"{self.rsrp_dbm}dBm",
                "rsrq": f"{self.rsrq_db}dB", "sinr": f"{self.sinr_db}dB",
                "session-uptime": "2m29s",
            })
        return row

    def info_v6(self) -> dict[str, str]:
        row = {
            "pin-status": "ok", "functionality": "full",
            "registration-status": "registered" if self.registered else "searching",
            "manufacturer": self.manufacturer, "model": self.model,
            "revision": self.revision, "imei": self.imei, "uicc": self.iccid,
            "access-technology": "Evolved 3G (LTE)",
        }
        if self.registered:
            row.update({
                "current-operator": self.mcc + self.mnc, "lac": str(self.tac),
                "current-cellid": str(self.cell_id),
                "earfcn": f"{self.earfcn} (band {self.band}, bandwidth 20Mhz)",
                "rssi": f"{self.rssi_dbm}dBm", "rsrp": f"{self.rsrp_dbm}dBm",
                "rsrq": f"{self.rsrq_db}dB", "sinr": f"{self.sinr_db}dB",
            })
        return row

    def at(self, command: str) -> str:
        cmd = command.strip().upper()
        if command.strip() in self.extra_at:
            return self.extra_at[command.strip()]
        if cmd == 'AT+QENG="SERVINGCELL"':
            if not self.registered:
                return '+QENG: "servingcell","SEARCH"\r\nOK'
            return (f'+QENG: "servingcell","NOCONN","LTE","FDD",{self.mcc},{self.mnc},'
                    f"{self.cell_id:X},{self.pci},{self.earfcn},{self.band},5,5,{self.tac:X},"
                    f"{self.rsrp_dbm},{self.rsrq_db},{self.rssi_dbm},{self.sinr_db},9,-32768,-"
                    "\r\nOK")
        if cmd == "AT+COPS?":
            if not self.registered:
                return "+COPS: 0\r\nOK"
            return f'+COPS: 0,2,"{self.mcc}{self.mnc}",7\r\nOK'
        if cmd in ("AT+QLTS=1", "AT+CCLK?"):
            t = self.network_utc_s
            if t is None:
                return ('+QLTS: ""\r\nOK' if cmd == "AT+QLTS=1"
                        else '+CCLK: "80/01/06,00:01:23+00"\r\nOK')
            tm = time.gmtime(t)
            if cmd == "AT+QLTS=1":
                return f'+QLTS: "{time.strftime("%Y/%m/%d,%H:%M:%S", tm)}+00,0"\r\nOK'
            return f'+CCLK: "{time.strftime("%y/%m/%d,%H:%M:%S", tm)}+00"\r\nOK'
        if cmd in ("AT", "AT+CFUN=1,1"):
            return "OK"
        return "ERROR"


async def run(sim_modem: LteModem, db: ConfigDB, profile: Profile, cmd: Command) -> None:
    """monitor (v7), info (v6) or at-chat on /interface/lte."""
    ref = cmd.args.get("numbers") or cmd.args.get(".id")
    if not ref:
        raise Trap("missing value(s) of argument(s) numbers")
    item = db.find(PATH, ref)
    if item is None:
        raise Trap(NO_SUCH_ITEM)
    if item.props.get("disabled") == "true":
        raise Trap("interface is disabled")
    if cmd.name == "at-chat":
        if "input" not in cmd.args:
            raise Trap("missing value(s) of argument(s) input")
        await cmd.send("!re", {"output": sim_modem.at(cmd.args["input"])})
        await cmd.done()
        return
    row = sim_modem.monitor_v7() if profile.v7 else sim_modem.info_v6()
    await cmd.send("!re", {"name": item.props.get("name", ref), **row})
    await cmd.done()

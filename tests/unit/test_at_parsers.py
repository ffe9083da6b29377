"""3GPP TS 27.007 and vendor parsers, from tables of literal replies.

Every unknown is None (never 99, 255, -32768 or 0xFFFF as a number); every garbled or
truncated reply is a DeviceReplyError that keeps the raw text.
"""

from __future__ import annotations

import calendar

import pytest

from drivers.errors import DeviceReplyError
from drivers.modem.at import parsers as p
from drivers.modem.at.protocol import AtError, classify_final, error_for, reply_prefix
from drivers.modem.netgear import parse_model
from drivers.modem.quectel import parse_qcsq, parse_qeng_servingcell, parse_qgpsloc, parse_qlts_gmt
from drivers.modem.routeros_lte import parse_at_chat_output, parse_lte_monitor
from drivers.modem.sierra import parse_gstatus
from drivers.modem.telit import parse_rfsts
from drivers.types import AccessTech, Registration, SimState

# -- framing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command", "expected"),
    [
        ("OK", "AT", ("ok", None, None)),
        ("ERROR", "AT+FOO", ("error", None, None)),
        ("+CME ERROR: 10", "AT+CPIN?", ("cme", 10, "SIM not inserted")),
        ("+CME ERROR: SIM not inserted", "AT+CPIN?", ("cme", 10, "SIM not inserted")),
        ('+CME ERROR: "SIM busy"', "AT+CPIN?", ("cme", 14, "SIM busy")),
        ("+CME ERROR: 516", "AT+QGPSLOC=2", ("cme", 516, None)),
        ("+CMS ERROR: 500", "AT+CMGS=1", ("cms", 500, None)),
        ("+CMS ERROR: unknown error", "AT+CMGS=1", ("cms", None, "unknown error")),
        ("NO CARRIER", "ATD123;", ("call", None, "NO CARRIER")),
        ("NO CARRIER", "AT+CSQ", None),  # unsolicited unless dialling
        ("+CSQ: 20,99", "AT+CSQ", None),
        ("OKAY", "AT", None),
    ],
)
def test_final_results(line, command, expected):
    assert classify_final(line, command) == expected


def test_error_for_keeps_raw_and_says_one_sentence():
    err = error_for("AT+CPIN?", "+CME ERROR: 10", raw="AT+CPIN?\n+CME ERROR: 10")
    assert isinstance(err, AtError) and isinstance(err, DeviceReplyError)
    assert err.code == 10 and err.kind == "cme"
    assert str(err) == "The modem answered +CME ERROR: 10 (SIM not inserted) to AT+CPIN?."
    assert "AT+CPIN?" in err.raw


@pytest.mark.parametrize(
    ("command", "prefix"),
    [
        ("AT+CEREG?", "+CEREG:"),
        ("AT+CSQ", "+CSQ:"),
        ('AT+QENG="servingcell"', "+QENG:"),
        ("AT!GSTATUS?", "!GSTATUS:"),
        ("AT#RFSTS", "#RFSTS:"),
        ("at+cops=3,2", "+COPS:"),
        ("ATI", None),
        ("ATE0", None),
    ],
)
def test_reply_prefix(command, prefix):
    assert reply_prefix(command) == prefix


# -- signal --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "rssi"),
    [
        ("+CSQ: 0,99", -113),
        ("+CSQ: 1,0", -111),
        ("+CSQ: 20,99", -73),
        ("+CSQ: 31,99", -51),
        ("+CSQ: 99,99", None),
        ("+CSQ: 150,99", None),  # Quectel TD-SCDMA RSCP range, not RSSI
        ("+CSQ:  20 , 99", -73),
    ],
)
def test_csq(line, rssi):
    assert p.parse_csq(line).rssi_dbm == rssi


@pytest.mark.parametrize(
    "line", ["+CSQ: 20", "+CSQ: 2x,99", "+CSQ: 45,99", "+CSQ:", "+CESQ: 99,99,255,255,20,40"]
)
def test_csq_garbled(line):
    with pytest.raises(DeviceReplyError) as exc:
        p.parse_csq(line)
    assert exc.value.raw == line


@pytest.mark.parametrize(
    ("line", "rsrp", "rsrq", "rscp", "rxlev"),
    [
        ("+CESQ: 99,99,255,255,20,46", -95, -10.0, None, None),
        ("+CESQ: 99,99,255,255,0,0", -141, -20.0, None, None),
        ("+CESQ: 99,99,255,255,34,97", -44, -3.0, None, None),
        ("+CESQ: 99,99,255,255,255,255", None, None, None, None),
        ("+CESQ: 99,99,40,30,255,255", None, None, -81, None),
        ("+CESQ: 40,0,255,255,255,255", None, None, None, -71),
        ("+CESQ: 99,99,255,255,19,41", -100, -10.5, None, None),
    ],
)
def test_cesq(line, rsrp, rsrq, rscp, rxlev):
    c = p.parse_cesq(line)
    assert (c.rsrp_dbm, c.rsrq_db, c.rscp_dbm, c.rxlev_dbm) == (rsrp, rsrq, rscp, rxlev)


@pytest.mark.parametrize(
    "line", ["+CESQ: 99,99,255,255,20", "+CESQ: 99,99,255,255,20,98", "+CESQ: 99,99,255,255,a,46"]
)
def test_cesq_garbled(line):
    with pytest.raises(DeviceReplyError):
        p.parse_cesq(line)


# -- registration --------------------------------------------------------------------------

REGISTRATION_TABLE = [
    # line, solicited, registration, area, cell, act
    ("+CREG: 0,1", True, Registration.HOME, None, None, None),
    ("+CREG: 2,5", True, Registration.ROAMING, None, None, None),
    ('+CREG: 2,1,"00C3","0000A13F"', True, Registration.HOME, 0xC3, 0xA13F, None),
    ('+CREG: 2,1,"00C3","0000A13F",7', True, Registration.HOME, 0xC3, 0xA13F, 7),
    ("+CREG: 2,1,00C3,0000A13F,2", True, Registration.HOME, 0xC3, 0xA13F, 2),
    ('+CEREG: 2,1,"2B10","0A1B2C03",7', True, Registration.HOME, 0x2B10, 0x0A1B2C03, 7),
    ('+CEREG: 2,5,"2b10","a1b2c03",7', True, Registration.ROAMING, 0x2B10, 0xA1B2C03, 7),
    ("+CEREG: 0,2", True, Registration.SEARCHING, None, None, None),
    ("+CEREG: 1,3", True, Registration.DENIED, None, None, None),
    ("+CEREG: 0,4", True, Registration.UNKNOWN, None, None, None),
    ("+CEREG: 0,0", True, Registration.NOT_REGISTERED, None, None, None),
    ('+CEREG: 2,1,"FFFE","FFFFFFF",7', True, Registration.HOME, None, None, 7),
    ('+CEREG: 2,1,"FFFF","0A1B2C03",7', True, Registration.HOME, None, 0x0A1B2C03, 7),
    # the 27.007 v8.6 form with a RAC (ModemManager CEREG2)
    ('+CEREG: 2,1,"2B10","00","0A1B2C03",7', True, Registration.HOME, 0x2B10, 0x0A1B2C03, 7),
    # with cause type and reject cause
    ('+CEREG: 2,3,"2B10","0A1B2C03",7,0,15', True, Registration.DENIED, 0x2B10, 0x0A1B2C03, 7),
    ('+CGREG: 2,1,"00C3","0000A13F",2,"01"', True, Registration.HOME, 0xC3, 0xA13F, 2),
    ('+C5GREG: 2,1,"000120","00B46E280",11', True, Registration.HOME, 0x120, 0xB46E280, 11),
    # unsolicited forms
    ("+CEREG: 1", False, Registration.HOME, None, None, None),
    ("+CEREG: 2", False, Registration.SEARCHING, None, None, None),
    ('+CEREG: 1,"2B10","0A1B2C03",7', False, Registration.HOME, 0x2B10, 0x0A1B2C03, 7),
    ('+CEREG: 5,"2B10","0A1B2C03",7', False, Registration.ROAMING, 0x2B10, 0x0A1B2C03, 7),
    ("+CREG: 1,00C3,0000A13F", False, Registration.HOME, 0xC3, 0xA13F, None),
    ('+CGREG: 1,"00C3","0000A13F",2,"01"', False, Registration.HOME, 0xC3, 0xA13F, 2),
]


@pytest.mark.parametrize(("line", "solicited", "reg", "area", "cell", "act"), REGISTRATION_TABLE)
def test_registration(line, solicited, reg, area, cell, act):
    info = p.parse_registration(line)  # shape decides solicited or not
    assert info.solicited is solicited
    assert (info.registration, info.area, info.cell_id, info.act) == (reg, area, cell, act)
    assert p.registration_is_solicited(line) is solicited


def test_registration_access_tech_and_enb():
    info = p.parse_registration('+CEREG: 2,1,"2B10","0A1B2C03",7')
    assert info.access_tech is AccessTech.LTE
    assert p.enb_id_of(info.cell_id, info.access_tech) == 0x0A1B2C
    assert p.enb_id_of(0x0B46E280, AccessTech.NR5G_SA) is None
    assert p.enb_id_of(None, AccessTech.LTE) is None


@pytest.mark.parametrize(
    "line",
    ["+CEREG: 2,9x", "+CEREG: 2,12", '+CEREG: 2,1,"2B1G","0A1B2C03",7', "+CEREG:", "+CFOO: 1"],
)
def test_registration_garbled(line):
    with pytest.raises(DeviceReplyError):
        p.parse_registration(line)


# -- operator, SIM, identity ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "operator", "mcc", "mnc", "act"),
    [
        ('+COPS: 0,0,"T-Mobile",7', "T-Mobile", None, None, 7),
        ('+COPS: 0,2,"310260",7', None, "310", "260", 7),
        ('+COPS: 0,2,"30272",7', None, "302", "72", 7),
        ('+COPS: 0,2,"310 410",7', None, "310", "410", 7),
        ('+COPS: 0,2,"311480",13', None, "311", "480", 13),
        ('+COPS: 0,2,"310012"', None, "310", "012", None),  # MNC keeps its leading zero
        ("+COPS: 0", None, None, None, None),
        ("+COPS: 2", None, None, None, None),
    ],
)
def test_cops(line, operator, mcc, mnc, act):
    c = p.parse_cops(line)
    assert (c.operator, c.mcc, c.mnc, c.act) == (operator, mcc, mnc, act)


@pytest.mark.parametrize(
    "line", ['+COPS: 0,2,"31026",7x', '+COPS: 0,2,"000260",7', '+COPS: 0,2,"31"']
)
def test_cops_garbled(line):
    with pytest.raises(DeviceReplyError):
        p.parse_cops(line)


@pytest.mark.parametrize(
    ("line", "state"),
    [
        ("+CPIN: READY", SimState.READY),
        ("+CPIN: SIM PIN", SimState.PIN_REQUIRED),
        ("+CPIN: SIM PUK", SimState.PUK_REQUIRED),
        ("+CPIN: PH-SIM PIN", SimState.LOCKED),
        ("+CPIN: PH-NET PIN", SimState.LOCKED),
        ("+CPIN: SIM PIN2", SimState.READY),
        ("+CPIN: NOT READY", SimState.NOT_READY),
        ('+CPIN: "READY"', SimState.READY),
    ],
)
def test_cpin(line, state):
    assert p.parse_cpin(line) is state


def test_cpin_garbled_and_cme_table():
    with pytest.raises(DeviceReplyError):
        p.parse_cpin("+CPIN: WHATEVER")
    assert p.CME_SIM_STATE[10] is SimState.ABSENT
    assert p.CME_SIM_STATE[14] is SimState.NOT_READY


@pytest.mark.parametrize(
    ("text", "iccid"),
    [
        # ModemManager's test vectors (test-modem-helpers.c)
        ('"984402003576012594F9"', "8944200053671052499"),
        ("98231420326409614067", "89324102234690160476"),
        ("+CCID: 89014103211118510720", "89014103211118510720"),
        ("+ICCID: 8901260123456789012F", "8901260123456789012"),
        ("+QCCID: 8901260123456789012F", "8901260123456789012"),
        ("!ICCID: 8901260123456789012", "8901260123456789012"),
        ("#CCID: 8901260123456789012", "8901260123456789012"),
        ("8901260123456789012f", "8901260123456789012"),
        ("+CCID: 89014103211118510720\nOK", "89014103211118510720"),
        ("+CEREG: 1\n+ICCID: 8901260123456789012F", "8901260123456789012"),
    ],
)
def test_iccid(text, iccid):
    assert p.parse_iccid(text) == iccid


@pytest.mark.parametrize(
    "text",
    [
        "+CCID: 1234567890123456789",
        "+CCID: 89012601234F6789012",
        "+CCID: 89O1260123456789012",
        "+CCID:",
    ],
)
def test_iccid_garbled(text):
    with pytest.raises(DeviceReplyError) as exc:
        p.parse_iccid(text)
    assert exc.value.raw == text


@pytest.mark.parametrize(
    ("lines", "imei"),
    [
        (["866834041234567"], "866834041234567"),
        (["+CGSN: 866834041234567"], "866834041234567"),
        (['+CGSN: "866834041234567"'], "866834041234567"),
        (["+CEREG: 1", "866834041234567"], "866834041234567"),
    ],
)
def test_imei(lines, imei):
    assert p.parse_imei(lines) == imei


def test_imei_garbled():
    with pytest.raises(DeviceReplyError):
        p.parse_imei(["86683404123"])


@pytest.mark.parametrize(
    ("lines", "prefix", "text"),
    [
        (["Quectel"], "+CGMI:", "Quectel"),
        (["+CGMI: Sierra Wireless, Incorporated"], "+CGMI:", "Sierra Wireless, Incorporated"),
        (['+CGMM: "LE910C4-NF"'], "+CGMM:", "LE910C4-NF"),
        (["Revision: EC25AFAR05A07M4G"], "+CGMR:", "EC25AFAR05A07M4G"),
        (["", "25.30.224"], "+CGMR:", "25.30.224"),
    ],
)
def test_info_text(lines, prefix, text):
    assert p.parse_info_text(lines, prefix) == text


def test_cfun():
    assert p.parse_cfun("+CFUN: 1") == 1
    assert p.parse_cfun("+CFUN: 4,0") == 4
    with pytest.raises(DeviceReplyError):
        p.parse_cfun("+CFUN: x")


# -- clock ---------------------------------------------------------------------------------


def utc(*args: int) -> float:
    return float(calendar.timegm((*args, 0, 0, 0)))


@pytest.mark.parametrize(
    ("line", "utc_s", "tz"),
    [
        ('+CCLK: "24/03/15,13:45:10-20"', utc(2024, 3, 15, 18, 45, 10), -18000),
        ('+CCLK: "24/03/15,13:45:10+00"', utc(2024, 3, 15, 13, 45, 10), 0),
        ('+CCLK: "24/03/16,01:00:00+32"', utc(2024, 3, 15, 17, 0, 0), 28800),
        ('+CCLK: "24/12/31,23:59:59"', utc(2024, 12, 31, 23, 59, 59), None),
        ('+CCLK: "80/01/06,00:01:23+00"', utc(1980, 1, 6, 0, 1, 23), 0),  # never set: judged later
    ],
)
def test_cclk(line, utc_s, tz):
    t = p.parse_cclk(line)
    assert (t.utc_s, t.tz_offset_s) == (utc_s, tz)


@pytest.mark.parametrize(
    "line",
    ['+CCLK: "24/13/15,13:45:10-20"', '+CCLK: "24/02/30,13:45:10"', '+CCLK: "garbage"', "+CCLK:"],
)
def test_cclk_garbled(line):
    with pytest.raises(DeviceReplyError):
        p.parse_cclk(line)


def test_find_line_among_urcs_and_missing():
    lines = ["+CEREG: 1", "RING", "+CSQ: 20,99"]
    assert p.find_line(lines, "+CSQ:") == "+CSQ: 20,99"
    with pytest.raises(DeviceReplyError) as exc:
        p.find_line(["OK"], "+CSQ:")
    assert str(exc.value) == "The modem's reply had no +CSQ: line: 'OK'."


# -- Quectel -------------------------------------------------------------------------------

QENG_LTE_EC25 = (
    '+QENG: "servingcell","NOCONN","LTE","FDD",310,260,A1B2C03,101,66786,66,5,5,2B10,'
    "-95,-10,-65,165,-"
)
QENG_LTE_EG12 = (  # from a RouterOS lte debug log of an EG12-EA (pastebin 2a9WR5hT)
    '+QENG: "servingcell","NOCONN","LTE","FDD",216,70,127328,189,476,1,3,3,D17,-104,-9,-77,18,-,-,-'
)
QENG_NSA = [
    '+QENG: "servingcell","NOCONN"',
    '+QENG: "LTE","FDD",310,260,A1B2C03,101,5230,13,5,5,2B10,-98,-11,-66,17,9,-32768,-',
    '+QENG: "NR5G-NSA",310,260,501,-90,15,-11,126490,71,2,0',
]
QENG_SA = (  # as in a community parser's test
    '+QENG: "servingcell","CONNECT","NR5G-SA","SA",460,11,0B46E280,0,120,632928,78,100,'
    "-97,-11,21,-32767,255"
)


def test_qeng_lte_fifth_db():
    q = parse_qeng_servingcell([QENG_LTE_EC25], lte_sinr="fifth_db")
    assert q.access_tech is AccessTech.LTE and q.state == "NOCONN"
    assert (q.mcc, q.mnc, q.cell_id, q.pci, q.earfcn, q.band, q.tac) == (
        "310", "260", 0xA1B2C03, 101, 66786, "B66", 0x2B10)
    assert (q.rsrp_dbm, q.rsrq_db, q.rssi_dbm, q.sinr_db) == (-95, -10.0, -65, 13.0)


def test_qeng_lte_eg12_db_with_dashes():
    q = parse_qeng_servingcell([QENG_LTE_EG12], lte_sinr="db")
    assert (q.mcc, q.mnc, q.tac, q.band, q.sinr_db) == ("216", "70", 0xD17, "B1", 18.0)


def test_qeng_nsa_three_lines():
    q = parse_qeng_servingcell(["", *QENG_NSA, "OK"], lte_sinr="db")
    assert q.access_tech is AccessTech.NR5G_NSA
    assert (q.rsrp_dbm, q.rsrq_db, q.sinr_db, q.band, q.tac) == (-98, -11.0, 17.0, "B13", 0x2B10)
    assert (q.nr_rsrp_dbm, q.nr_sinr_db, q.nr_rsrq_db, q.nr_band) == (-90, 15.0, -11.0, "n71")


def test_qeng_sa():
    q = parse_qeng_servingcell([QENG_SA], nr_sinr="db")
    assert q.access_tech is AccessTech.NR5G_SA
    assert (q.mcc, q.cell_id, q.tac, q.band, q.rsrp_dbm, q.rsrq_db, q.sinr_db) == (
        "460", 0x0B46E280, 0x120, "n78", -97, -11.0, 21.0)


@pytest.mark.parametrize(
    "lines", [['+QENG: "servingcell","SEARCH"'], ['+QENG: "servingcell","LIMSRV"']]
)
def test_qeng_searching_has_no_cell(lines):
    q = parse_qeng_servingcell(lines)
    assert q.access_tech is None and q.rsrp_dbm is None


def test_qeng_sentinels_never_become_numbers():
    line = ('+QENG: "servingcell","NOCONN","LTE","FDD",310,260,FFFFFFF,101,66786,66,5,5,FFFF,'
            "-32768,-,-,255,-")
    q = parse_qeng_servingcell([line])
    assert (q.cell_id, q.tac, q.rsrp_dbm, q.rsrq_db, q.rssi_dbm, q.sinr_db) == (None,) * 6


@pytest.mark.parametrize(
    "lines",
    [
        ['+QENG: "servingcell","NOCONN","LTE","FDD",310,260'],  # truncated
        ['+QENG: "servingcell","NOCONN","LTE","FDD",310,260,A1B2C03,101,66786,66,5,5,2B1Z,'
         "-95,-10,-65,165,-"],
        ["OK"],
    ],
)
def test_qeng_garbled(lines):
    with pytest.raises(DeviceReplyError):
        parse_qeng_servingcell(lines)


@pytest.mark.parametrize(
    ("line", "rssi", "rsrp", "sinr", "rsrq"),
    [
        ('+QCSQ: "LTE",-65,-95,165,-10', -65, -95, 13.0, -10.0),
        ('+QCSQ: "LTE",77,-116,76,-17', -77, -116, -4.8, -17.0),  # EG21-G positive RSSI
        ('+QCSQ: "CAT-M1",-91,-129,67,-20', -91, -129, -6.6, -20.0),
        ('+QCSQ: "NOSERVICE"', None, None, None, None),
        ('+QCSQ: "GSM",-71', -71, None, None, None),
    ],
)
def test_qcsq(line, rssi, rsrp, sinr, rsrq):
    q = parse_qcsq(line)
    assert (q.rssi_dbm, q.rsrp_dbm, q.sinr_db, q.rsrq_db) == (rssi, rsrp, sinr, rsrq)


def test_qgpsloc_and_qlts():
    fix = parse_qgpsloc(
        "+QGPSLOC: 061951.000,41.87810,-87.62980,1.2,182.0,3,0.00,0.0,0.0,150324,08"
    )
    assert (fix.lat_deg, fix.lon_deg, fix.accuracy_m) == (41.8781, -87.6298, 6.0)
    assert fix.utc_s == utc(2024, 3, 15, 6, 19, 51)
    with pytest.raises(DeviceReplyError):
        parse_qgpsloc("+QGPSLOC: 061951.000,141.8,-87.6,1.2,182.0,3,0.00,0.0,0.0,150324,08")
    t = parse_qlts_gmt('+QLTS: "2024/03/15,18:45:10-20,0"')
    assert t is not None and (t.utc_s, t.tz_offset_s, t.source) == (
        utc(2024, 3, 15, 18, 45, 10), -18000, "nitz")
    assert parse_qlts_gmt('+QLTS: ""') is None


# -- Sierra, Telit -------------------------------------------------------------------------

# As !GSTATUS? prints it: tabs between pairs, trailing blanks kept.
GSTATUS = [
    "!GSTATUS: ",
    "Current Time:  4021\t\tTemperature: 40",
    "Reset Counter: 1\t\tMode:        ONLINE         ",
    "System mode:   LTE        \tPS state:    Attached     ",
    "LTE band:      B4     \t\tLTE bw:      20 MHz  ",
    "LTE Rx chan:   2175\t\tLTE Tx chan: 20175",
    "LTE CA state:  NOT ASSIGNED",
    "EMM state:     Registered     \tNormal Service ",
    "RRC state:     RRC Idle       ",
    "IMS reg state: No Srv  \t\t",
    "",
    "PCC RxM RSSI:  -73\t\tRSRP (dBm):  -103",
    "PCC RxD RSSI:  -74\t\tRSRP (dBm):  -104",
    "Tx Power:      --\t\tTAC:         2D1F (11551)",
    "RSRQ (dB):     -11.1\t\tCell ID:     0195E20F (26600975)",
    "SINR (dB):      6.2",
]


def test_gstatus():
    g = parse_gstatus(GSTATUS)
    assert g.access_tech is AccessTech.LTE
    assert (g.band, g.earfcn, g.rssi_dbm, g.rsrp_dbm, g.rsrq_db, g.sinr_db) == (
        "B4", 2175, -73, -103, -11.1, 6.2)
    assert (g.tac, g.cell_id, g.emm_state) == (0x2D1F, 0x0195E20F, "Registered")


def test_gstatus_spaces_instead_of_tabs_and_no_service():
    lines = ["!GSTATUS:", "System mode:   No Service   PS state:    Not attached",
             "PCC RxM RSSI:  --   RSRP (dBm):  --"]
    g = parse_gstatus(lines)
    assert g.access_tech is None and g.rsrp_dbm is None and g.rssi_dbm is None


def test_gstatus_garbled():
    with pytest.raises(DeviceReplyError):
        parse_gstatus(["OK"])
    with pytest.raises(DeviceReplyError):
        parse_gstatus(["!GSTATUS:", "PCC RxM RSSI:  -7x\t\tRSRP (dBm):  -103"])


def test_rfsts_lte():
    r = parse_rfsts('#RFSTS: "310 410",5110,-97,-68,-11,2B10,FF,0,64,19,1,A1B2C03,'
                    '"310410123456789","AT&T",3,12,165')
    assert (r.mcc, r.mnc, r.lte, r.earfcn, r.rsrp_dbm, r.rssi_dbm, r.rsrq_db) == (
        "310", "410", True, 5110, -97, -68, -11.0)
    assert (r.tac, r.cell_id, r.band, r.sinr_db) == (0x2B10, 0xA1B2C03, "B12", 13.0)


def test_rfsts_other_rat_and_garbled():
    r = parse_rfsts('#RFSTS: "310 410",4385,-80,-70,-5,A13F,12,0,DRX,19,1')
    assert (r.mcc, r.mnc, r.lte) == ("310", "410", False)
    with pytest.raises(DeviceReplyError):
        parse_rfsts("#RFSTS: ")


# -- Netgear JSON, RouterOS monitor --------------------------------------------------------

NETGEAR_MODEL = {
    "session": {"userRole": "Admin", "secToken": "abc"},
    "general": {"model": "LM1200", "manufacturer": "Netgear", "FWversion": "NTG9X07C_20.06.09.00",
                "IMEI": "359000000000001"},
    "sim": {"status": "Ready", "iccid": "89014103211118510720", "pin": {"mode": "Disabled"}},
    "wwan": {"connection": "Connected", "registerNetworkDisplay": "AT&T", "roaming": False,
             "currentNWserviceType": "LteService",
             "signalStrength": {"rssi": -68, "rscp": 0, "ecio": 0, "rsrp": -98, "rsrq": -11,
                                "sinr": 12, "bars": 3}},
    "wwanadv": {"curBand": "LTE B2", "MCC": "310", "MNC": "410", "LAC": 11024,
                "cellId": 169552899, "chanId": 900, "radioQuality": 48},
}


def test_netgear_model():
    r = parse_model(NETGEAR_MODEL)
    assert (r.registration, r.access_tech, r.rsrp_dbm, r.rsrq_db, r.sinr_db, r.rssi_dbm) == (
        Registration.HOME, AccessTech.LTE, -98, -11.0, 12.0, -68)
    assert (r.band, r.mcc, r.mnc, r.tac, r.cell_id, r.enb_id, r.earfcn) == (
        "B2", "310", "410", 11024, 169552899, 662316, 900)
    assert (r.sim_state, r.iccid, r.imei, r.connected, r.operator) == (
        SimState.READY, "89014103211118510720", "359000000000001", True, "AT&T")


def test_netgear_no_service_and_zeros():
    data = {"wwan": {"connection": "Disconnected", "currentNWserviceType": "NoService",
                     "signalStrength": {"rssi": 0, "rsrp": 0, "rsrq": 0, "sinr": 0}},
            "wwanadv": {"MCC": "", "MNC": "", "cellId": 0, "LAC": 65535, "curBand": ""},
            "sim": {"status": "No SIM"}}
    r = parse_model(data)
    assert r.registration is Registration.NOT_REGISTERED and r.sim_state is SimState.ABSENT
    assert (r.rssi_dbm, r.rsrp_dbm, r.rsrq_db, r.sinr_db, r.cell_id, r.tac, r.mcc) == (None,) * 7


def test_netgear_garbled():
    with pytest.raises(DeviceReplyError):
        parse_model({"general": {}})
    with pytest.raises(DeviceReplyError):
        parse_model(["not", "a", "dict"])


V7_MONITOR = {
    "status": "connected", "model": "EG18-EA", "revision": "EG18EAPAR01A12M4G",
    "current-operator": "LMT", "current-cellid": "3103242", "enb-id": "12122",
    "sector-id": "10", "phy-cellid": "480", "data-class": "LTE", "session-uptime": "15m54s",
    "imei": "869816040981234", "iccid": "89371011221020571234",
    "primary-band": "B3@20Mhz earfcn: 1300 phy-cellid: 480", "cqi": "7", "ri": "2",
    "rssi": "-68dBm", "rsrp": "-97dBm", "rsrq": "-9dB", "sinr": "6dB",
}
V6_INFO = {
    "pin-status": "no password required", "functionality": "full",
    "registration-status": "roaming", "manufacturer": "MikroTik", "model": "R11e-4G",
    "current-operator": "310260", "lac": "5566", "current-cellid": "5456546",
    "access-technology": "Evolved 3G (LTE)", "enb-id": "21314", "phy-cellid": "556",
    "earfcn": "6400 (band 20, bandwidth 10Mhz)", "uicc": "8901260123456789012F",
    "rssi": "-80dBm", "rsrp": "-106dBm", "rsrq": "-7dB", "sinr": "18dB",
}


def test_routeros_v7_monitor():
    r = parse_lte_monitor(V7_MONITOR)
    assert (r.registration, r.access_tech, r.connected, r.operator) == (
        Registration.HOME, AccessTech.LTE, True, "LMT")
    assert (r.band, r.earfcn, r.pci, r.cell_id, r.enb_id) == ("B3", 1300, 480, 3103242, 12122)
    assert (r.rssi_dbm, r.rsrp_dbm, r.rsrq_db, r.sinr_db, r.iccid) == (
        -68, -97, -9.0, 6.0, "89371011221020571234")
    assert r.mcc is None  # a name, not a PLMN


def test_routeros_v6_info():
    r = parse_lte_monitor(V6_INFO)
    assert (r.registration, r.access_tech, r.mcc, r.mnc, r.tac) == (
        Registration.ROAMING, AccessTech.LTE, "310", "260", 5566)
    assert (r.band, r.earfcn, r.sim_state, r.radio_on, r.iccid) == (
        "B20", 6400, SimState.READY, True, "8901260123456789012")


def test_at_chat_output():
    r = parse_at_chat_output("AT+CSQ", "+CSQ: 20,99\r\nOK")
    assert r.lines == ("+CSQ: 20,99",) and r.final == "OK"
    assert parse_at_chat_output("AT+CSQ", "AT+CSQ\n+CSQ: 20,99").lines == ("+CSQ: 20,99",)
    with pytest.raises(AtError) as exc:
        parse_at_chat_output("AT+QGPSLOC=2", "+CME ERROR: 516")
    assert exc.value.code == 516

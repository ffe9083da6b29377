"""The virtual lab itself: topology, SBC SIP peers, web host, impairments, teardown.

Root only (network namespaces); skips with the reason otherwise. One lab per session
on a prefix of its own; every test leaves it unimpaired.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hil.lab import Lab, LabError, wait_until
from hil.lab import topology as t
from hil.lab.probe import parse_sip_response

NOT_ROOT = os.geteuid() != 0
NOT_ROOT_REASON = "needs root: the lab builds network namespaces (CI runs these as root)"

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.skipif(NOT_ROOT, reason=NOT_ROOT_REASON),
]

SBCS = list(t.SBC_ADDRESSES.values())

# RFC 3261 §11.1's OPTIONS example, addressed to the lab's SBC and sent as literal text.
LITERAL_OPTIONS = (
    "OPTIONS sip:sbc@{sbc} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 198.51.100.2:5060;branch=z9hG4bKhjhs8ass877\r\n"
    "Max-Forwards: 70\r\n"
    "To: <sip:sbc@{sbc}>\r\n"
    "From: Lab <sip:lab-site-1@198.51.100.2>;tag=1928301774\r\n"
    "Call-ID: a84b4c76e66710\r\n"
    "CSeq: 63104 OPTIONS\r\n"
    "Contact: <sip:lab-site-1@198.51.100.2>\r\n"
    "Accept: application/sdp\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)


def _phone_reaches_sbc(lab: Lab, timeout_s: float = 0.5) -> bool:
    return lab.ping(t.PHONE, t.SBC_EAST, timeout_s=timeout_s)


def test_phone_pings_sbc_via_the_primary(clean_lab: Lab) -> None:
    assert _phone_reaches_sbc(clean_lab, timeout_s=2.0)
    route = clean_lab.exec(t.CPE, ["ip", "route", "get", t.SBC_EAST, "from", t.PHONE_ADDRESS,
                                   "iif", t.LAN_BRIDGE], check=True).stdout
    assert f"dev {t.PRIMARY_IF}" in route
    assert clean_lab.carrier(t.CPE, t.PRIMARY_IF)
    assert clean_lab.carrier(t.CPE, t.CELLULAR_IF)


def test_cpe_has_no_default_route_via_lte_and_keeps_the_customer_nat(clean_lab: Lab) -> None:
    routes = clean_lab.exec(t.CPE, ["ip", "route", "show", "default"], check=True).stdout
    assert routes.strip() == f"default via {t.PRIMARY_GATEWAY} dev {t.PRIMARY_IF}"
    tables = clean_lab.exec(t.CPE, ["nft", "list", "tables"], check=True).stdout
    assert f"table ip {t.CUSTOMER_NAT_TABLE}" in tables
    sysctls = clean_lab.exec(
        t.CPE, ["sysctl", "-n", "net.ipv4.ip_forward", "net.netfilter.nf_conntrack_acct"],
        check=True,
    ).stdout.split()
    assert sysctls == ["1", "1"]


def test_web_server_reachable_from_the_pc(clean_lab: Lab) -> None:
    assert clean_lab.http_get(t.PC, f"http://{t.WEB_ADDRESS}/") == 200


@pytest.mark.parametrize("sbc", SBCS)
def test_literal_sip_options_from_the_cpe_is_answered_200(clean_lab: Lab, sbc: str) -> None:
    request = LITERAL_OPTIONS.format(sbc=sbc)
    result = clean_lab.exec(t.CPE, Lab.python("hil.lab.probe", "udp", sbc, "5060",
                                              "--timeout", "2"), input=request)
    reply = json.loads(result.stdout)["reply"]
    assert reply is not None, f"no answer from {sbc}"
    response = parse_sip_response(reply)
    headers = response["headers"]
    assert (response["version"], response["status"], response["reason"]) == ("SIP/2.0", 200, "OK")
    assert headers["via"] == "SIP/2.0/UDP 198.51.100.2:5060;branch=z9hG4bKhjhs8ass877"
    assert headers["from"] == "Lab <sip:lab-site-1@198.51.100.2>;tag=1928301774"
    assert headers["to"].startswith(f"<sip:sbc@{sbc}>;tag=")
    assert headers["call-id"] == "a84b4c76e66710"
    assert headers["cseq"] == "63104 OPTIONS"
    assert "OPTIONS" in headers["allow"]


# A REGISTER and a whole call (INVITE, 100, 200 + SDP, ACK, BYE, 200) from the phone,
# through the CPE's NAT: one socket, so the SBC's replies must cross the NAT back.
DIALOG_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys, uuid
    sbc = sys.argv[1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((sbc, 5060)); s.settimeout(2)
    host, port = s.getsockname()
    def request(method, call_id, cseq, extra=""):
        s.send((f"{method} sip:sbc@{sbc} SIP/2.0\\r\\n"
                f"Via: SIP/2.0/UDP {host}:{port};rport;branch=z9hG4bK{uuid.uuid4().hex[:12]}\\r\\n"
                "Max-Forwards: 70\\r\\nTo: <sip:sbc@lab>\\r\\nFrom: <sip:phone@lab>;tag=ph1\\r\\n"
                f"Call-ID: {call_id}\\r\\nCSeq: {cseq} {method}\\r\\n"
                f"Contact: <sip:phone@{host}:{port}>\\r\\n{extra}Content-Length: 0\\r\\n\\r\\n"
                ).encode())
    def first_lines(n):
        out = []
        for _ in range(n):
            data = s.recv(4096).decode()
            out.append({"line": data.split("\\r\\n", 1)[0], "text": data})
        return out
    results = {}
    reg = uuid.uuid4().hex
    request("REGISTER", reg, 1, "Expires: 300\\r\\n")
    results["register"] = first_lines(1)
    call = uuid.uuid4().hex
    request("INVITE", call, 1)
    results["invite"] = first_lines(2)
    request("ACK", call, 1)
    request("BYE", call, 2)
    results["bye"] = first_lines(1)
    print(json.dumps(results))
    """
)


def test_sbc_answers_register_and_a_whole_call_from_the_phone(clean_lab: Lab) -> None:
    result = clean_lab.exec(t.PHONE, [sys.executable, "-c", DIALOG_SCRIPT, t.SBC_WEST],
                            check=True)
    results = json.loads(result.stdout)
    register = results["register"][0]
    assert register["line"] == "SIP/2.0 200 OK"
    assert ";expires=300" in register["text"]
    assert [r["line"] for r in results["invite"]] == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]
    answer = results["invite"][1]["text"]
    assert "m=audio 16384 RTP/AVP 0" in answer
    assert f"c=IN IP4 {t.SBC_WEST}" in answer
    assert results["bye"][0]["line"] == "SIP/2.0 200 OK"


def test_blackhole_on_primary_is_silent_upstream_with_carrier_up(clean_lab: Lab) -> None:
    clean_lab.impair("primary", "blackhole")
    assert not _phone_reaches_sbc(clean_lab)
    assert not clean_lab.sip_options(t.CPE, t.SBC_EAST, timeout_s=0.5)["answered"]
    assert clean_lab.carrier(t.CPE, t.PRIMARY_IF)
    # The gateway itself still answers: why checking the gateway misses such outages.
    assert clean_lab.ping(t.CPE, t.PRIMARY_GATEWAY, timeout_s=2.0)
    clean_lab.impair("primary", "clear")
    assert wait_until(lambda: _phone_reaches_sbc(clean_lab), 5.0)


def test_primary_down_drops_the_carrier_and_up_restores_it(clean_lab: Lab) -> None:
    clean_lab.impair("primary", "down")
    assert wait_until(lambda: not clean_lab.carrier(t.CPE, t.PRIMARY_IF), 3.0)
    assert clean_lab.carrier(t.CPE, t.CELLULAR_IF)
    assert not _phone_reaches_sbc(clean_lab)
    clean_lab.impair("primary", "up")
    assert wait_until(lambda: clean_lab.carrier(t.CPE, t.PRIMARY_IF), 3.0)
    assert wait_until(lambda: _phone_reaches_sbc(clean_lab), 5.0)


def test_total_loss_drops_everything_and_clear_restores(clean_lab: Lab) -> None:
    clean_lab.impair("primary", "loss", 100)
    assert not clean_lab.ping(t.PHONE, t.SBC_EAST, count=5, timeout_s=0.2)
    assert not clean_lab.ping(t.CPE, t.PRIMARY_GATEWAY, count=3, timeout_s=0.2)
    assert clean_lab.carrier(t.CPE, t.PRIMARY_IF)
    clean_lab.impair("primary", "loss", 0)
    assert wait_until(lambda: _phone_reaches_sbc(clean_lab), 5.0)


def test_a_dead_target_is_one_data_centre_lost(clean_lab: Lab) -> None:
    clean_lab.impair("target", "dead", t.SBC_EAST)
    assert not clean_lab.sip_options(t.CPE, t.SBC_EAST, timeout_s=0.5)["answered"]
    assert clean_lab.sip_options(t.CPE, t.SBC_WEST, timeout_s=2.0)["answered"]
    assert clean_lab.sip_options(t.CPE, t.SBC_CENTRAL, timeout_s=2.0)["answered"]
    assert clean_lab.status()["impairments"]["dead_targets"] == [t.SBC_EAST]
    clean_lab.impair("target", "alive", t.SBC_EAST)
    clean_lab.impair("target", "alive", t.SBC_EAST)  # idempotent
    assert clean_lab.sip_options(t.CPE, t.SBC_EAST, timeout_s=2.0)["answered"]


def test_cellular_path_is_cgnat_and_can_be_blackholed(clean_lab: Lab) -> None:
    # A test-only host route sends the CPE's own probes to one SBC out of lte0.
    route = ["ip", "route", "replace", f"{t.SBC_CENTRAL}/32", "via", t.CELLULAR_GATEWAY]
    clean_lab.exec(t.CPE, route, check=True)
    try:
        assert clean_lab.sip_options(t.CPE, t.SBC_CENTRAL, timeout_s=2.0)["answered"]
        entries = clean_lab.exec(t.LTE, ["conntrack", "-L", "-p", "udp", "--dport", "5060"]).stdout
        assert f"dst={t.CELLULAR_PUBLIC_ADDRESS}" in entries  # the SBC replied to the CGNAT
        clean_lab.impair("cellular", "blackhole")
        assert not clean_lab.sip_options(t.CPE, t.SBC_CENTRAL, timeout_s=0.5)["answered"]
        assert clean_lab.carrier(t.CPE, t.CELLULAR_IF)
        assert _phone_reaches_sbc(clean_lab, timeout_s=2.0)  # the primary is untouched
        clean_lab.impair("cellular", "clear")
        assert wait_until(
            lambda: clean_lab.sip_options(t.CPE, t.SBC_CENTRAL, timeout_s=0.5)["answered"], 5.0
        )
    finally:
        clean_lab.exec(t.CPE, ["ip", "route", "del", f"{t.SBC_CENTRAL}/32"])


#: A routing table and rule priority of the tests' own (the agent is not running here).
TEST_CELLULAR_TABLE = "4077"

#: The installer's echo client, run inside the CPE's namespace on one link.
ROUND_TRIPS_SCRIPT = textwrap.dedent(
    """
    import asyncio, dataclasses, json, sys
    from agent.clock import Clock
    from agent.installer.echo import rtp_round_trips
    host, port, source, device = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    clock = Clock()
    figures = asyncio.run(rtp_round_trips(
        (host, port), count=10, interval_s=0.02, timeout_s=0.5, source_address=source,
        device=device, monotonic=clock.monotonic, sleep=clock.sleep))
    print(json.dumps(dataclasses.asdict(figures)))
    """
)

#: link -> (the CPE's interface, its address), as the agent binds its probes.
LINK_BINDINGS = {
    "primary": (t.PRIMARY_IF, t.PRIMARY_ADDRESS),
    "cellular": (t.CELLULAR_IF, t.CELLULAR_ADDRESS),
}


@pytest.fixture
def cellular_table(clean_lab: Lab) -> Iterator[Lab]:
    """What the agent installs for its own traffic over LTE, for tests without the agent:
    a table with a default route via the carrier, and a rule from the LTE address."""
    cpe = t.CPE
    clean_lab.exec(cpe, ["ip", "route", "replace", "default", "via", t.CELLULAR_GATEWAY,
                         "dev", t.CELLULAR_IF, "table", TEST_CELLULAR_TABLE], check=True)
    clean_lab.exec(cpe, ["ip", "rule", "add", "from", t.CELLULAR_ADDRESS, "lookup",
                         TEST_CELLULAR_TABLE, "priority", TEST_CELLULAR_TABLE], check=True)
    try:
        yield clean_lab
    finally:
        clean_lab.exec(cpe, ["ip", "rule", "del", "priority", TEST_CELLULAR_TABLE])
        clean_lab.exec(cpe, ["ip", "route", "flush", "table", TEST_CELLULAR_TABLE])


@pytest.mark.parametrize("sbc", SBCS)
def test_udp_echo_answers_the_cpe_over_each_link(cellular_table: Lab, sbc: str) -> None:
    lab = cellular_table
    for link, (ifname, source) in LINK_BINDINGS.items():
        payload = f"cpe-lab echo over the {link} link to {sbc}"
        result = lab.exec(t.CPE, Lab.python("hil.lab.probe", "udp", sbc, str(t.ECHO_PORT),
                                            "--source", source, "--device", ifname,
                                            "--timeout", "2"), input=payload)
        answer = json.loads(result.stdout)
        assert answer["reply"] == payload, f"no echo over the {link}: {result.stderr}"
        assert answer["from"] == f"{sbc}:{t.ECHO_PORT}"
    # The cellular datagram really crossed the carrier: its CGNAT tracked it.
    entries = lab.exec(t.LTE, ["conntrack", "-L", "-p", "udp", "--dport",
                               str(t.ECHO_PORT)]).stdout
    assert any(f"dst={sbc}" in line and f"dst={t.CELLULAR_PUBLIC_ADDRESS}" in line
               for line in entries.splitlines()), entries


def _round_trips(lab: Lab, link: str, sbc: str = t.SBC_EAST) -> dict[str, Any]:
    ifname, source = LINK_BINDINGS[link]
    result = lab.exec(t.CPE, [sys.executable, "-c", ROUND_TRIPS_SCRIPT, sbc,
                              str(t.ECHO_PORT), source, ifname], check=True)
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def test_installer_round_trips_over_each_link_and_a_blackholed_one(cellular_table: Lab) -> None:
    lab = cellular_table
    for link in LINK_BINDINGS:
        figures = _round_trips(lab, link)
        assert (figures["sent"], figures["received"], figures["loss_pct"]) == (10, 10, 0.0), link
        assert (figures["bytes_sent"], figures["bytes_received"]) == (2000, 2000)
        assert figures["mos"] > 4.0 and figures["detail"] is None
    lab.impair("cellular", "blackhole")
    dark = _round_trips(lab, "cellular")
    assert (dark["received"], dark["loss_pct"], dark["mos"]) == (0, 100.0, None)
    assert dark["detail"] == f"no reply from {t.SBC_EAST}:{t.ECHO_PORT}"
    assert _round_trips(lab, "primary")["received"] == 10  # the primary is untouched


def test_rate_limit_installs_tbf_both_ways_and_clear_removes_it(clean_lab: Lab) -> None:
    clean_lab.impair("primary", "rate", 256)
    found = clean_lab.status()["impairments"]["primary"]
    assert found == ["tbf on cpe0", "tbf on up0"]
    assert _phone_reaches_sbc(clean_lab, timeout_s=2.0)
    clean_lab.impair("primary", "clear")
    assert clean_lab.status()["impairments"]["primary"] == []


def test_delay_uses_netem_only_where_the_kernel_has_it(clean_lab: Lab) -> None:
    if clean_lab.has_netem():
        clean_lab.impair("cellular", "delay", 50)
        assert "netem on cpe0" in clean_lab.status()["impairments"]["cellular"]
    else:
        with pytest.raises(LabError, match="netem"):
            clean_lab.impair("cellular", "delay", 50)


def test_bad_impairments_say_what_to_do(clean_lab: Lab) -> None:
    with pytest.raises(LabError, match="percentage"):
        clean_lab.impair("primary", "loss")
    with pytest.raises(LabError, match="unknown impairment"):
        clean_lab.impair("primary", "explode")
    with pytest.raises(LabError, match="outside the lab"):
        clean_lab.impair("target", "dead", "8.8.8.8")


def test_rtp_stream_crosses_the_lab_and_the_sink_sees_the_primary_nat(clean_lab: Lab) -> None:
    summary_file = clean_lab.lab_dir / "rtp-test-summary.json"
    ready = clean_lab.lab_dir / "rtp-test.ready"
    sink = clean_lab.spawn(t.SBC, Lab.python("hil.sims.rtp_stream", "sink", "--summary",
                                             str(summary_file), "--ready-file", str(ready),
                                             "--echo"), name="rtp-test-sink")
    try:
        assert wait_until(ready.exists, 5.0), "the sink did not start"
        sent = clean_lab.exec(t.PHONE, Lab.python("hil.sims.rtp_stream", "send", "--count",
                                                  "25", "--dscp-ef"), check=True)
        report = json.loads(sent.stdout)
        assert report["sent"] == 25
        assert report["echoed"] >= 24  # the last echo may still be on its way back
        # Stop the sink and read its summary (written on SIGTERM).
        clean_lab.stop("rtp-test-sink")
        summary = json.loads(summary_file.read_text())
        assert summary["packets_by_source"] == {t.PRIMARY_PUBLIC_ADDRESS: 25}
        assert summary["lost"] == 0
        assert summary["failover_gap_s"] is None
    finally:
        if sink.poll() is None:
            clean_lab.stop("rtp-test-sink")


def test_status_reports_everything_alive(clean_lab: Lab) -> None:
    info = clean_lab.status()
    assert all(info["namespaces"].values())
    assert {"sbc-east", "sbc-west", "sbc-central", "web"} <= set(info["processes"])
    assert {"echo-east", "echo-west", "echo-central"} <= set(info["processes"])
    assert all(p["alive"] for p in info["processes"].values())
    assert info["carrier"] == {t.PRIMARY_IF: True, t.CELLULAR_IF: True}
    assert clean_lab.config_path.exists()


def test_cli_impair_and_status(clean_lab: Lab) -> None:
    cli = [sys.executable, "-m", "hil.lab"]
    prefix = ["--prefix", clean_lab.prefix]
    done = subprocess.run([*cli, "impair", "target", t.SBC_WEST, "dead", *prefix],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    status = subprocess.run([*cli, "status", "--json", *prefix], capture_output=True, text=True,
                            check=False)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["impairments"]["dead_targets"] == [t.SBC_WEST]
    bad = subprocess.run([*cli, "impair", "primary", "loss", "150", *prefix],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "percentage" in bad.stderr


def test_up_is_idempotent_and_down_leaves_nothing_even_after_a_crash() -> None:
    prefix = f"cpt{os.getpid()}d-"
    first = Lab(prefix=prefix).up()
    lab_dir = first.lab_dir
    # A second `up` (e.g. after a crash) replaces the leftovers.
    lab = Lab(prefix=prefix).up()
    try:
        daemons = [int(p.read_text().split()[0]) for p in lab.pid_dir.glob("*.pid")]
        # Three SBCs, an echo responder beside each, the web server, the simulated modem.
        assert len(daemons) == 8
        # Something the lab did not record, still inside one of its namespaces.
        stray = lab.spawn(t.CPE, ["sleep", "300"])
        assert lab.ping(t.PHONE, t.SBC_EAST, timeout_s=2.0)
    finally:
        # A fresh object, as a new process would have after a crash of this one.
        Lab(prefix=prefix).down()
    assert stray.wait(timeout=5) is not None
    assert not [ns for ns in _namespaces() if ns.startswith(prefix)]
    assert not lab_dir.exists()
    deadline = time.monotonic() + 5
    while any(_running(pid) for pid in daemons) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in daemons if _running(pid)]
    Lab(prefix=prefix).down()  # idempotent on nothing


def _namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

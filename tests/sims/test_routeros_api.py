"""The simulator against documented RouterOS API behaviour, over raw sockets."""

from __future__ import annotations

import time

import pytest

from hil.sims.routeros import RouterOSSim

from .conftest import PASSWORD, USER, RawClient, attrs, rows


def test_login_good(raw: RawClient) -> None:
    assert raw.login() == [["!done"]]


@pytest.mark.parametrize(("user", "password"), [(USER, "wrong"), ("nobody", PASSWORD)])
def test_login_bad_traps_then_done_and_keeps_connection(raw: RawClient, user: str,
                                                        password: str) -> None:
    assert raw.login(user, password) == [
        ["!trap", "=message=invalid user name or password (6)"], ["!done"]]
    assert raw.login() == [["!done"]]  # may retry on the same connection


def test_command_before_login_is_fatal_and_closes(raw: RawClient) -> None:
    assert raw.talk("/interface/print") == [["!fatal", "not logged in"]]
    assert raw.closed()


def test_bare_login_gets_legacy_challenge(raw: RawClient) -> None:
    reply = raw.talk("/login")
    assert reply[0][0] == "!done" and len(attrs(reply[0])["ret"]) == 32


def test_quit(logged_in: RawClient) -> None:
    assert logged_in.talk("/quit") == [["!fatal", "session terminated on request"]]
    assert logged_in.closed()


def test_empty_sentence_ignored(logged_in: RawClient) -> None:
    logged_in.sock.sendall(b"\x00")
    assert logged_in.talk("/system/identity/print") == [["!re", "=name=MikroTik"], ["!done"]]


def test_tags_echoed_on_every_reply_and_interleaved(logged_in: RawClient,
                                                    sim: RouterOSSim) -> None:
    sim.slow(0.3, count=1, path="/interface/print")
    logged_in.send("/interface/print", "?name=ether1", ".tag=slow")
    logged_in.send("/system/identity/print", ".tag=fast")
    got = [logged_in.read() for _ in range(4)]
    assert got[0] == ["!re", ".tag=fast", "=name=MikroTik"]
    assert got[1] == ["!done", ".tag=fast"]
    assert got[2][:2] == ["!re", ".tag=slow"] and "=name=ether1" in got[2]
    assert got[3] == ["!done", ".tag=slow"]


def test_trap_carries_tag(logged_in: RawClient) -> None:
    assert logged_in.talk("/interface/nope", ".tag=7") == [
        ["!trap", ".tag=7", "=message=no such command"], ["!done", ".tag=7"]]


def test_unknown_path_two_traps(logged_in: RawClient) -> None:
    # home-assistant/core#68115 and the townet manual: category 0, then the prefix trap.
    assert logged_in.talk("/ip/adress/print") == [
        ["!trap", "=category=0", "=message=no such command or directory (adress)"],
        ["!trap", "=message=no such command prefix"], ["!done"]]


def test_command_word_without_slash(logged_in: RawClient) -> None:
    assert logged_in.talk("=src-address=1.2.3.4") == [
        ["!trap", "=message=no such command prefix"], ["!done"]]


@pytest.mark.parametrize("word", ["/interface/frobnicate", "/interface/print/terse",
                                  "/ip/firewall/connection/add"])
def test_unknown_command(logged_in: RawClient, word: str) -> None:
    assert logged_in.talk(word) == [["!trap", "=message=no such command"], ["!done"]]


@pytest.mark.parametrize(("profile", "message"), [
    ("7.18", "unknown parameter bogus"), ("6.49", "unknown parameter")], indirect=["profile"])
def test_unknown_parameter(logged_in: RawClient, message: str) -> None:
    assert logged_in.talk("/ip/firewall/mangle/add", "=chain=prerouting", "=bogus=1") == [
        ["!trap", f"=message={message}"], ["!done"]]
    # read-only properties are not parameters either
    assert logged_in.talk("/ip/firewall/mangle/add", "=chain=prerouting", "=bytes=1")[0][0] \
        == "!trap"


def test_bad_reference_is_documented_category_1(logged_in: RawClient) -> None:
    assert logged_in.talk("/ip/address/add", "=address=192.168.1.1/24", "=interface=asdf") == [
        ["!trap", "=category=1", "=message=input does not match any value of interface"],
        ["!done"]]


def test_missing_required(logged_in: RawClient) -> None:
    assert logged_in.talk("/ip/firewall/address-list/add", "=list=x") == [
        ["!trap", "=message=missing value(s) of argument(s) address"], ["!done"]]


def test_add_set_remove_and_ids(logged_in: RawClient, sim: RouterOSSim) -> None:
    ids = []
    for n in range(1, 4):
        reply = logged_in.talk("/ip/firewall/address-list/add", "=list=voip",
                               f"=address=10.0.0.{n}")
        assert reply[0][0] == "!done"
        ids.append(attrs(reply[0])["ret"])
    assert ids == ["*1", "*2", "*3"]
    for _ in range(30):  # ids are hex and keep increasing
        ids.append(attrs(logged_in.talk("/ip/firewall/address-list/add", "=list=bulk",
                                        f"=address=10.1.0.{len(ids)}")[0])["ret"])
    assert ids[-1] == "*21" and ids[25] == "*1A"
    assert logged_in.talk("/ip/firewall/address-list/set", "=.id=*2", "=comment=two") == [
        ["!done"]]
    assert logged_in.talk("/ip/firewall/address-list/set", "=numbers=*3",
                          "=disabled=yes") == [["!done"]]
    got = {r[".id"]: r for r in rows(logged_in.talk("/ip/firewall/address-list/print",
                                                    "?list=voip"))}
    assert got["*2"]["comment"] == "two" and got["*3"]["disabled"] == "true"
    assert "comment" not in got["*1"]  # unset properties are left out
    assert logged_in.talk("/ip/firewall/address-list/remove", "=.id=*1,*2") == [["!done"]]
    assert [r[".id"] for r in rows(logged_in.talk("/ip/firewall/address-list/print",
                                                  "?list=voip"))] == ["*3"]
    assert logged_in.talk("/ip/firewall/address-list/remove", "=.id=*1") == [
        ["!trap", "=message=no such item (4)"], ["!done"]]
    assert logged_in.talk("/ip/firewall/address-list/enable", "=.id=*3") == [["!done"]]
    assert sim.items("/ip/firewall/address-list")[0]["disabled"] == "false"


def test_duplicate_entry_and_name(logged_in: RawClient) -> None:
    logged_in.talk("/ip/firewall/address-list/add", "=list=a", "=address=1.1.1.1")
    assert logged_in.talk("/ip/firewall/address-list/add", "=list=a", "=address=1.1.1.1")[0] \
        == ["!trap", "=message=failure: already have such entry"]
    logged_in.talk("/routing/table/add", "=name=lte", "=fib=")
    assert logged_in.talk("/routing/table/add", "=name=lte", "=fib=")[0] == [
        "!trap", "=message=failure: item with such name already exists"]


def test_dynamic_builtin_rule_cannot_be_changed_moved_or_removed(logged_in: RawClient) -> None:
    first = rows(logged_in.talk("/ip/firewall/filter/print"))[0]
    assert first["dynamic"] == "true"
    assert first["comment"] == "special dummy rule to show fasttrack counters"
    expect = {
        ("/ip/firewall/filter/disable", f"=.id={first['.id']}"): "failure: cannot change builtin",
        ("/ip/firewall/filter/set", f"=.id={first['.id']}", "=comment=x"):
            "failure: cannot change builtin",
        ("/ip/firewall/filter/remove", f"=.id={first['.id']}"): "failure: cannot remove builtin",
        ("/ip/firewall/filter/move", f"=numbers={first['.id']}"): "failure: cannot move builtin",
    }
    for words, message in expect.items():
        assert logged_in.talk(*words) == [["!trap", f"=message={message}"], ["!done"]]


def test_place_before_and_move(logged_in: RawClient) -> None:
    filters = rows(logged_in.talk("/ip/firewall/filter/print", "=.proplist=.id,action"))
    fasttrack = next(r[".id"] for r in filters if r["action"] == "fasttrack-connection")
    new = attrs(logged_in.talk("/ip/firewall/filter/add", "=chain=forward", "=action=accept",
                               "=comment=voip", f"=place-before={fasttrack}")[0])["ret"]
    order = [r[".id"] for r in rows(logged_in.talk("/ip/firewall/filter/print"))]
    assert order.index(new) == order.index(fasttrack) - 1
    assert logged_in.talk("/ip/firewall/filter/add", "=chain=forward",
                          f"=place-before={order[0]}")[0] == [
        "!trap", "=message=failure: cannot move builtin"]
    assert logged_in.talk("/ip/firewall/filter/move", f"=numbers={new}") == [["!done"]]
    assert [r[".id"] for r in rows(logged_in.talk("/ip/firewall/filter/print"))][-1] == new


def test_proplist_selects_and_orders(logged_in: RawClient) -> None:
    got = logged_in.talk("/interface/print", "?name=ether1", "=.proplist=running,name,nope")
    assert got == [["!re", "=running=true", "=name=ether1"], ["!done"]]
    # librouteros docs: absent properties give empty !re sentences, one per item
    got = logged_in.talk("/ip/firewall/nat/print", "=.proplist=nope")
    assert got == [["!re"], ["!done"]]


def test_queries_with_stack_operators(logged_in: RawClient) -> None:
    names = [r["name"] for r in rows(logged_in.talk(
        "/interface/print", "?name=ether1", "?name=bridge", "?#|", "=.proplist=name"))]
    assert names == ["ether1", "bridge"]
    names = [r["name"] for r in rows(logged_in.talk(
        "/interface/print", "?type=ether", "?running=yes", "?#&!", "=.proplist=name"))]
    assert names[0] == "ether3" and "ether1" not in names and "bridge" in names
    assert rows(logged_in.talk("/ip/route/print", "?-gateway")) == []
    assert len(rows(logged_in.talk("/ip/route/print", "?>distance=0"))) == 1
    assert len(rows(logged_in.talk("/ip/route/print", "?<distance=1"))) == 3
    assert len(rows(logged_in.talk("/ip/route/print", "?dynamic=no"))) == 1


def test_count_only(logged_in: RawClient) -> None:
    assert logged_in.talk("/interface/print", "=count-only=", "?type=ether") == [
        ["!done", "=ret=10"]]


@pytest.mark.parametrize(("profile", "empty"), [
    ("7.18", [["!empty"], ["!done"]]), ("7.17", [["!done"]]), ("6.49", [["!done"]])],
    indirect=["profile"])
def test_empty_print_per_profile(logged_in: RawClient, empty: list[list[str]]) -> None:
    assert logged_in.talk("/ip/firewall/mangle/print") == empty
    tagged = logged_in.talk("/ip/firewall/mangle/print", ".tag=9")
    assert tagged == [[w[0], ".tag=9"] for w in empty]


@pytest.mark.parametrize("profile", ["6.49"], indirect=True)
def test_v6_menus(logged_in: RawClient) -> None:
    assert logged_in.talk("/routing/table/print") == [
        ["!trap", "=category=0", "=message=no such command or directory (table)"],
        ["!trap", "=message=no such command prefix"], ["!done"]]
    route = rows(logged_in.talk("/ip/route/print", "?dst-address=0.0.0.0/0"))[0]
    assert "routing-mark" not in route and "routing-table" not in route
    reply = logged_in.talk("/ip/route/add", "=gateway=192.168.5.1", "=routing-mark=lte")
    assert reply[0][0] == "!done"
    assert logged_in.talk("/ip/route/add", "=gateway=192.168.5.1", "=routing-table=lte")[0] == [
        "!trap", "=message=unknown parameter"]
    res = rows(logged_in.talk("/system/resource/print"))[0]
    assert res["version"].startswith("6.49") and res["build-time"] == "Aug/12/2024 11:05:01"
    assert rows(logged_in.talk("/user/group/print", "?name=read"))[0]["policy"].endswith(
        "!ftp,!write,!policy,!dude")


def test_v7_menus(logged_in: RawClient) -> None:
    assert rows(logged_in.talk("/routing/table/print")) == [
        {".id": "*1", "name": "main", "fib": "true", "invalid": "false", "disabled": "false",
         "dynamic": "true"}]
    assert logged_in.talk("/ip/route/add", "=gateway=192.168.5.1",
                          "=routing-table=lte")[0] == [
        "!trap", "=category=1", "=message=input does not match any value of routing-table"]
    logged_in.talk("/routing/table/add", "=name=lte", "=fib=yes")
    assert logged_in.talk("/ip/route/add", "=gateway=192.168.5.1",
                          "=routing-table=lte")[0][0] == "!done"
    res = rows(logged_in.talk("/system/resource/print"))[0]
    assert res["build-time"] == "2025-03-11 10:13:22"
    board = rows(logged_in.talk("/system/routerboard/getall"))[0]
    assert board["model"] == "RB2011UiAS" and ".id" not in board


def test_v7_set_without_id(logged_in: RawClient) -> None:
    assert logged_in.talk("/ip/firewall/filter/set", "=comment=x") == [
        ["!trap", "=message=missing =.id="], ["!done"]]


def test_singleton_set(logged_in: RawClient) -> None:
    assert logged_in.talk("/system/identity/set", "=name=cpe-1") == [["!done"]]
    assert logged_in.talk("/system/identity/print") == [["!re", "=name=cpe-1"], ["!done"]]


def test_connection_remove_and_expiry(logged_in: RawClient, sim: RouterOSSim) -> None:
    a = sim.add_connection("192.168.88.10:5060", "203.0.113.5:5060", timeout_s=60)
    b = sim.add_connection("192.168.88.10:10000", "203.0.113.5:20000")
    got = rows(logged_in.talk("/ip/firewall/connection/print", "?dst-address=203.0.113.5:5060"))
    assert got[0][".id"] == a and got[0]["protocol"] == "udp"
    assert got[0]["timeout"] in ("59s", "1m")
    sim.expire_connection(b)
    assert logged_in.talk("/ip/firewall/connection/remove", f"=.id={b}") == [
        ["!trap", "=message=no such item (4)"], ["!done"]]
    assert logged_in.talk("/ip/firewall/connection/remove", f"=.id={a}") == [["!done"]]
    assert sim.connections() == []


def test_service_port_sip_helper(logged_in: RawClient) -> None:
    sip = rows(logged_in.talk("/ip/firewall/service-port/print", "?name=sip"))[0]
    assert sip["ports"] == "5060,5061" and sip["disabled"] == "false"
    assert logged_in.talk("/ip/firewall/service-port/disable", "=numbers=sip") == [["!done"]]
    assert logged_in.talk("/ip/firewall/service-port/remove", "=numbers=sip") == [
        ["!trap", "=message=no such command"], ["!done"]]


def test_least_privilege(sim: RouterOSSim) -> None:
    sim.add_user("reader", "pw", "read")
    client = RawClient(sim.address)
    assert client.login("reader", "pw") == [["!done"]]
    assert client.talk("/interface/print", "=count-only=")[0][0] == "!done"
    assert client.talk("/ip/firewall/address-list/add", "=list=x", "=address=1.1.1.1") == [
        ["!trap", "=message=not enough permissions (9)"], ["!done"]]
    group = rows(client.talk("/user/group/print", "?name=read"))[0]
    assert "!write" in group["policy"].split(",") and "api" in group["policy"].split(",")
    active = rows(client.talk("/user/active/print", "?name=reader"))
    assert active[0]["via"] == "api"
    client.close()
    sim.set_group_policy("noapi", "read,!api")
    sim.add_user("noapi", "pw", "noapi")
    other = RawClient(sim.address)
    assert other.login("noapi", "pw")[0][0] == "!trap"
    other.close()


def test_ping_answers_from_reachability_map(logged_in: RawClient, sim: RouterOSSim) -> None:
    sim.set_ping("*", None, routing_table="main")
    sim.set_ping("9.9.9.9", 42.5, routing_table="lte")
    down = rows(logged_in.talk("/ping", "=address=9.9.9.9", "=count=2", "=interval=0.2",
                               "=routing-table=main"))
    assert [r["status"] for r in down] == ["timeout", "timeout"]
    assert down[-1]["packet-loss"] == "100"
    up = rows(logged_in.talk("/ping", "=address=9.9.9.9", "=count=3", "=interval=0.2",
                             "=routing-table=lte"))
    assert [r["seq"] for r in up] == ["0", "1", "2"]
    assert up[0]["time"] == "42ms500us" and up[-1]["received"] == "3"
    assert up[-1]["avg-rtt"] == "42ms500us"
    sim.set_ping("9.9.9.9", pattern=[20.0, None], interface="ether10")
    lossy = rows(logged_in.talk("/ping", "=address=9.9.9.9", "=count=4", "=interval=0.2",
                                "=interface=ether10"))
    assert [r.get("status") for r in lossy] == [None, "timeout", None, "timeout"]
    assert lossy[-1]["packet-loss"] == "50"


def test_ping_without_count_runs_until_cancel(logged_in: RawClient) -> None:
    logged_in.send("/ping", "=address=1.1.1.1", "=interval=0.2", ".tag=p")
    first = logged_in.read()
    assert first[:2] == ["!re", ".tag=p"]
    logged_in.send("/cancel", "=tag=p", ".tag=c")
    seen = []
    while True:
        s = logged_in.read()
        seen.append(s)
        if s == ["!done", ".tag=p"]:
            break
    assert ["!trap", ".tag=p", "=category=2", "=message=interrupted"] in seen
    assert seen.index(["!done", ".tag=c"]) < seen.index(["!done", ".tag=p"])


def test_listen_reports_carrier_changes(logged_in: RawClient, sim: RouterOSSim) -> None:
    logged_in.send("/interface/listen", ".tag=l")
    deadline = time.monotonic() + 3
    while sim.listeners == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sim.set_running("ether1", False)
    s = logged_in.read()
    assert s[:2] == ["!re", ".tag=l"] and "=name=ether1" in s and "=running=false" in s


def test_monitor_traffic_once(logged_in: RawClient, sim: RouterOSSim) -> None:
    sim.add_traffic("ether10", rx_bytes=1000, tx_bytes=500)
    got = rows(logged_in.talk("/interface/monitor-traffic", "=interface=ether10", "=once="))
    assert got[0]["rx-bits-per-second"] == "8000" and got[0]["tx-bits-per-second"] == "4000"


def test_slow_reply_then_normal(logged_in: RawClient, sim: RouterOSSim) -> None:
    sim.slow(0.5, count=1)
    logged_in.sock.settimeout(0.2)
    logged_in.send("/system/identity/print")
    with pytest.raises(TimeoutError):
        logged_in.read()
    logged_in.sock.settimeout(3)
    assert logged_in.until_done() == [["!re", "=name=MikroTik"], ["!done"]]
    started = time.monotonic()
    assert logged_in.talk("/system/identity/print")[-1] == ["!done"]
    assert time.monotonic() - started < 0.3


def test_drop_connections_with_fatal(logged_in: RawClient, sim: RouterOSSim) -> None:
    sim.drop_connections(fatal="system reboot")
    assert logged_in.read() == ["!fatal", "system reboot"]
    assert logged_in.closed()


def test_reboot_command_needs_policy_and_drops(sim: RouterOSSim) -> None:
    sim.add_user("writer", "pw", "write")
    client = RawClient(sim.address)
    client.login("writer", "pw")
    assert client.talk("/system/reboot") == [["!done"]]
    assert client.closed()
    client.close()


def test_snapshot_covers_every_menu(sim: RouterOSSim) -> None:
    snap = sim.snapshot()
    assert {"/interface", "/ip/route", "/routing/table", "/ip/firewall/filter",
            "/ip/firewall/connection", "/user", "/system/resource"} <= set(snap)
    assert all("password" not in u for u in snap["/user"])


def test_reset_counters(logged_in: RawClient, sim: RouterOSSim) -> None:
    sim.add_traffic("ether10", rx_bytes=3000, tx_bytes=1500)
    assert logged_in.talk("/interface/reset-counters", "=numbers=ether10") == [["!done"]]
    row = rows(logged_in.talk("/interface/print", "?name=ether10",
                              "=.proplist=rx-byte,tx-byte,rx-packet"))[0]
    assert row == {"rx-byte": "0", "tx-byte": "0", "rx-packet": "0"}
    assert logged_in.talk("/ip/firewall/filter/reset-counters-all") == [["!done"]]


def test_counters_are_64_bit(logged_in: RawClient, sim: RouterOSSim) -> None:
    sim.set_counters("ether1", rx_byte=2**64 - 100)
    sim.add_traffic("ether1", rx_bytes=150)
    row = rows(logged_in.talk("/interface/print", "?name=ether1", "=.proplist=rx-byte"))[0]
    assert row["rx-byte"] == "50"

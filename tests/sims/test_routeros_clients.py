"""The simulator against the real client (librouteros 4.2.2), over TLS, and run standalone."""

from __future__ import annotations

import json
import select
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import librouteros
import pytest
from librouteros.exceptions import ConnectionClosed, FatalError, TrapError
from librouteros.query import Key

from hil.sims.routeros import RouterOSSim, control_call

from .conftest import PASSWORD, USER

ROOT = Path(__file__).resolve().parents[2]


def connect(sim: RouterOSSim, timeout: float = 3.0, **kw: object) -> librouteros.Api:
    host, port = sim.address
    return librouteros.connect(host, USER, PASSWORD, port=port, timeout=timeout, **kw)


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


@pytest.mark.parametrize("profile", ["6.49", "7.17", "7.18"], indirect=True)
def test_librouteros_select_add_update_remove(sim: RouterOSSim) -> None:
    api = connect(sim)
    name, running = Key("name"), Key("running")
    up = list(api.path("/interface").select(name, running).where(running == True))  # noqa: E712
    assert {r["name"] for r in up} == {"ether1", "ether2", "ether10", "bridge"}
    lists = api.path("/ip/firewall/address-list")
    new_id = lists.add(list="cpe-agent-voip", address="203.0.113.0/24", comment="cpe-agent")
    assert new_id.startswith("*")
    lists.update(**{".id": new_id, "disabled": True})
    got = list(lists.select(Key(".id"), Key("disabled")).where(Key("list") == "cpe-agent-voip"))
    assert got == [{".id": new_id, "disabled": True}]
    # An empty result must end cleanly on every profile (7.18 sends !empty first).
    assert list(lists.select(Key(".id")).where(Key("list") == "nothing")) == []
    lists.remove(new_id)
    with pytest.raises(TrapError) as err:
        lists.remove(new_id)
    assert str(err.value) == "no such item (4)"
    api.close()


def test_librouteros_in_and_ne_queries(sim: RouterOSSim) -> None:
    api = connect(sim)
    name = Key("name")
    got = [r["name"] for r in api.path("/interface").select(name).where(
        name.In("ether1", "ether2", "lte1"))]
    assert got == ["ether1", "ether2"]
    got = [r["name"] for r in api.path("/interface").select(name).where(
        Key("type") != "ether")]
    assert got == ["bridge"]
    api.close()


def test_librouteros_traps(sim: RouterOSSim) -> None:
    api = connect(sim)
    with pytest.raises(librouteros.exceptions.MultiTrapError) as err:
        tuple(api("/ip/adress/print"))
    assert str(err.value) == "no such command or directory (adress), no such command prefix"
    with pytest.raises(TrapError, match="unknown parameter foo"):
        api.path("/ip/firewall/mangle").add(chain="prerouting", foo="1")
    api.close()


def test_librouteros_bad_login_and_fatal(sim: RouterOSSim) -> None:
    host, port = sim.address
    with pytest.raises(TrapError, match=r"invalid user name or password \(6\)"):
        librouteros.connect(host, USER, "nope", port=port, timeout=3)
    with pytest.raises(FatalError, match="not logged in"):
        librouteros.connect(host, USER, PASSWORD, port=port, timeout=3,
                            login_method=lambda api, u, p: tuple(api("/interface/print")))


def test_reboot_drops_connection_and_resets_counters(sim: RouterOSSim) -> None:
    api = connect(sim)
    sim.add_traffic("ether10", rx_bytes=150_000, tx_bytes=30_000)
    sim.add_connection("192.168.88.10:5060", "203.0.113.5:5060")
    api.path("/ip/firewall/address-list").add(list="t", address="1.1.1.1", timeout="1h")
    api.path("/ip/firewall/address-list").add(list="p", address="2.2.2.2")
    before = next(iter(api.path("/interface").select(Key("rx-byte")).where(
        Key("name") == "ether10")))
    assert before["rx-byte"] == 150_000
    wait_until(lambda: sim.client_count == 1)
    sim.reboot()
    wait_until(lambda: sim.client_count == 0)
    with pytest.raises((ConnectionClosed, OSError)):
        tuple(api.path("/interface"))
    api.close()
    api = connect(sim)
    after = next(iter(api.path("/interface").select().where(Key("name") == "ether10")))
    assert (after["rx-byte"], after["tx-byte"], after["rx-packet"]) == (0, 0, 0)
    assert list(api.path("/ip/firewall/connection")) == []
    assert [r["list"] for r in api.path("/ip/firewall/address-list")] == ["p"]
    uptime = next(iter(api.path("/system/resource")))["uptime"]
    assert uptime in ("0s", "1s")
    api.close()


def test_reboot_downtime_refuses_clients(sim: RouterOSSim) -> None:
    sim.reboot(downtime_s=0.5)
    with pytest.raises((ConnectionClosed, OSError)):
        connect(sim, timeout=1)
    deadline = time.monotonic() + 3
    while True:
        try:
            connect(sim, timeout=1).close()
            break
        except (ConnectionClosed, OSError):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_slow_reply_times_the_client_out(sim: RouterOSSim) -> None:
    api = connect(sim, timeout=0.3)
    sim.slow(1.0, count=1, path="/interface")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        tuple(api.path("/interface"))
    assert time.monotonic() - started < 0.9
    api.close()  # the reply never read would confuse the next command
    api = connect(sim, timeout=0.3)
    assert tuple(api.path("/system/identity"))
    api.close()


async def test_librouteros_async_client(sim: RouterOSSim) -> None:
    host, port = sim.address
    api = await librouteros.async_connect(host, USER, PASSWORD, port=port, timeout=3)
    names = [r["name"] async for r in api.path("/interface").select(Key("name"))]
    assert names[:2] == ["ether1", "ether2"]
    rows = [r async for r in api.path("/ip/firewall/mangle")]
    assert rows == []
    await api.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_api_ssl_with_a_test_ca(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=router",
         "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    with RouterOSSim(user=USER, password=PASSWORD, tls_cert=str(cert), tls_key=str(key)) as sim:
        assert sim.tls_address is not None
        host, port = sim.tls_address
        ctx = ssl.create_default_context(cafile=str(cert))
        api = librouteros.connect(host, USER, PASSWORD, port=port, timeout=3,
                                  ssl_wrapper=partial(ctx.wrap_socket, server_hostname=host))
        assert next(iter(api.path("/system/identity")))["name"] == "MikroTik"
        api.close()


def test_standalone_cli_and_control_port() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.sims.routeros_api", "--listen", "127.0.0.1:0",
         "--profile", "6.49", "--model", "hAP-ac2", "--user", USER, "--password", PASSWORD,
         "--control", "127.0.0.1:0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the simulator did not report its addresses in time"
        info = json.loads(proc.stdout.readline())
        host, port = info["api"]
        chost, cport = info["control"]
        control_call(chost, cport, "add_traffic", interface="ether5", rx_bytes=4096)
        api = librouteros.connect(host, USER, PASSWORD, port=port, timeout=3)
        names = [r["name"] for r in api.path("/interface").select(Key("name"))]
        assert names == ["ether1", "ether2", "ether3", "ether4", "ether5", "bridge"]
        row = next(iter(api.path("/interface").select().where(Key("name") == "ether5")))
        assert row["rx-byte"] == 4096
        assert control_call(chost, cport, "status")["clients"] == 1
        snap = control_call(chost, cport, "snapshot")
        assert "/routing/table" not in snap and snap["/system/resource"][0]["board-name"] \
            == "hAP ac^2"
        with pytest.raises(RuntimeError, match="unknown op"):
            control_call(chost, cport, "rm_rf")
        api.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_model_profile_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="does not run RouterOS 6"):
        RouterOSSim(profile="6.49", model="RB5009")


def test_chateau_has_builtin_lte() -> None:
    sim = RouterOSSim(profile="7.18", model="Chateau-LTE")
    lte = [i for i in sim.items("/interface") if i["name"] == "lte1"]
    assert lte and lte[0]["type"] == "lte"
    assert any(a["interface"] == "lte1" and a["dynamic"] == "true"
               for a in sim.items("/ip/address"))

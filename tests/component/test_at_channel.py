"""AtChannel against the AT modem simulator on a real pty (no mocks of pyserial)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from drivers.errors import NeedsHumanError, RetryableError
from drivers.modem.at.channel import AtChannel, AtTimeout, ModemHung
from drivers.modem.at.protocol import AtError
from hil.sims.at_modem import AtModemSim

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sim() -> Iterator[AtModemSim]:
    with AtModemSim("quectel-ec25", boot_s=0.2) as s:
        yield s


@pytest.fixture
async def chan(sim: AtModemSim) -> AsyncIterator[AtChannel]:
    c = AtChannel(sim.path, timeout_s=0.5, hang_after=3)
    await c.open()
    try:
        yield c
    finally:
        await c.close()


async def settle() -> None:
    """Let the reader thread hand over what the pty already holds."""
    await asyncio.sleep(0.15)


async def test_open_turns_echo_off_and_tolerates_the_echo(sim: AtModemSim) -> None:
    assert sim.session.echo is True  # V.250 default after power-up
    c = AtChannel(sim.path, timeout_s=0.5)
    await c.open()
    try:
        assert sim.session.echo is False
        assert sim.commands[0] == "ATE0"
        r = await c.command("AT+CSQ")
        assert r.lines == ("+CSQ: 24,99",) and r.final == "OK"
    finally:
        await c.close()


async def test_echo_mid_session_is_dropped(chan: AtChannel, sim: AtModemSim) -> None:
    sim.session.echo = True
    r = await chan.command("AT+CGMI")
    assert r.lines == ("Quectel",)
    assert "AT+CGMI" in r.raw  # nothing lost: the echo is in the raw text


@pytest.mark.parametrize("where", ["before", "mid", "after"])
async def test_urc_around_and_inside_a_reply(chan: AtChannel, sim: AtModemSim, where: str) -> None:
    seen: list[str] = []
    chan.subscribe("+CEREG:", seen.append)
    chan.subscribe("RING", seen.append)
    sim.inject_urc('+CEREG: 1,"2B10","A1B2C03",7', "RING", where=where)
    r = await chan.command("AT+CGSN")
    assert r.lines == ("866834041234567",)
    await settle()
    assert seen == ['+CEREG: 1,"2B10","A1B2C03",7', "RING"]


async def test_urc_inside_a_multiline_reply(chan: AtChannel, sim: AtModemSim) -> None:
    sim.set_cell(mode="NR5G-NSA")
    seen: list[str] = []
    chan.subscribe("+QIND:", seen.append)
    sim.inject_urc('+QIND: "csq",20,99', where="mid")
    r = await chan.command('AT+QENG="servingcell"')
    assert [ln.split(",")[0] for ln in r.lines] == [
        '+QENG: "servingcell"', '+QENG: "LTE"', '+QENG: "NR5G-NSA"']
    await settle()
    assert seen == ['+QIND: "csq",20,99']


async def test_same_prefix_urc_inside_its_own_query(chan: AtChannel, sim: AtModemSim) -> None:
    """AT+CEREG? claims +CEREG: lines, but an unsolicited +CEREG: 2 is not the reply."""
    from drivers.modem.at.parsers import registration_is_solicited

    await chan.command("AT+CEREG=2")
    seen: list[str] = []
    chan.subscribe("+CEREG:", seen.append)
    sim.inject_urc("+CEREG: 2", where="before")
    r = await chan.command("AT+CEREG?", accept=registration_is_solicited)
    assert r.lines == ('+CEREG: 2,1,"2B10","A1B2C03",7',)
    await settle()
    assert seen == ["+CEREG: 2"]


async def test_idle_urcs_and_bursts(chan: AtChannel, sim: AtModemSim) -> None:
    seen: list[str] = []
    chan.subscribe("", seen.append)
    sim.inject_urc(*[f'+QIND: "csq",{i},99' for i in range(50)])
    sim.inject_urc("+CPIN: NOT READY")
    for _ in range(20):
        if len(seen) == 51:
            break
        await settle()
    assert len(seen) == 51 and seen[-1] == "+CPIN: NOT READY"


async def test_unknown_unsolicited_lines_are_kept(chan: AtChannel, sim: AtModemSim) -> None:
    sim.inject_urc("+WHATEVER: 1")
    await settle()
    assert "+WHATEVER: 1" in chan.stray


async def test_cme_error_numeric_and_verbose(chan: AtChannel, sim: AtModemSim) -> None:
    sim.remove_sim()
    with pytest.raises(AtError) as exc:
        await chan.command("AT+CPIN?")
    assert (exc.value.kind, exc.value.code) == ("cme", 10)
    await chan.command("AT+CMEE=2")
    with pytest.raises(AtError) as exc:
        await chan.command("AT+CPIN?")
    assert exc.value.code == 10 and exc.value.text == "SIM not inserted"
    assert str(exc.value) == "The modem answered +CME ERROR: SIM not inserted to AT+CPIN?."


async def test_plain_error(chan: AtChannel) -> None:
    with pytest.raises(AtError) as exc:
        await chan.command("AT+NOSUCH")
    assert exc.value.kind == "error" and exc.value.final == "ERROR"


async def test_garbage_bytes_lose_nothing(chan: AtChannel, sim: AtModemSim) -> None:
    sim.inject_raw(b"\xff\xfe\x00zz\x81\r\n", where="before")
    r = await chan.command("AT+CSQ")
    assert "+CSQ: 24,99" in r.lines
    assert any("zz" in ln for ln in r.raw.splitlines())


async def test_timeout_then_late_reply_is_not_taken_for_the_next(
    chan: AtChannel, sim: AtModemSim
) -> None:
    sim.slow(0.8, "AT+CSQ")
    with pytest.raises(AtTimeout):
        await chan.command("AT+CSQ", timeout_s=0.3)
    assert chan.consecutive_timeouts == 1 and not chan.hung
    r = await chan.command("AT+CGMI", timeout_s=2.0)
    assert r.lines == ("Quectel",)
    assert chan.consecutive_timeouts == 0


async def test_repeated_timeouts_mean_hung_and_recovery_clears_it(
    chan: AtChannel, sim: AtModemSim
) -> None:
    sim.hang()
    for _ in range(2):
        with pytest.raises(AtTimeout):
            await chan.command("AT", timeout_s=0.2)
    with pytest.raises(ModemHung) as exc:
        await chan.command("AT", timeout_s=0.2)
    assert chan.hung and "3 commands in a row" in str(exc.value)
    assert isinstance(exc.value, RetryableError)
    sim.restart()  # power cycle: silent for boot_s, then RDY
    ready = await chan.wait_for("RDY", 3.0)
    assert ready == "RDY"
    r = await chan.command("AT+CGMM", timeout_s=1.0)  # echo is back on after the restart
    assert r.lines == ("EC25",) and not chan.hung


async def test_wait_for_times_out(chan: AtChannel) -> None:
    with pytest.raises(AtTimeout):
        await chan.wait_for("RDY", 0.1)


async def test_port_that_goes_away_fails_the_command(sim: AtModemSim) -> None:
    c = AtChannel(sim.path, timeout_s=0.5)
    await c.open()
    try:
        sim.unplug()
        await settle()
        with pytest.raises(RetryableError) as exc:
            await c.command("AT", timeout_s=0.5)
        assert not c.is_open or "went away" in str(exc.value)
    finally:
        await c.close()


async def test_missing_port_needs_a_human() -> None:
    with pytest.raises(NeedsHumanError) as exc:
        await AtChannel("/dev/does-not-exist-modem").open()
    assert "cannot be opened" in str(exc.value)


async def test_socket_url_works_the_same(sim: AtModemSim) -> None:
    """serial_for_url("socket://...") reaches the same modem through a TCP relay (as a
    ser2net or a terminal server would give it)."""
    import os
    import socket
    import threading
    import tty

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fd = os.open(sim.path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    stop = threading.Event()

    def relay() -> None:
        conn, _ = listener.accept()
        conn.settimeout(0.05)

        def pty_to_sock() -> None:
            import select

            while not stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.05)
                if ready:
                    try:
                        conn.sendall(os.read(fd, 4096))
                    except OSError:
                        return

        threading.Thread(target=pty_to_sock, daemon=True).start()
        while not stop.is_set():
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            os.write(fd, data)
        conn.close()

    threading.Thread(target=relay, daemon=True).start()
    c = AtChannel(f"socket://127.0.0.1:{port}", timeout_s=1.0)
    try:
        await c.open()
        r = await c.command("AT+CGMM")
        assert r.lines == ("EC25",)
    finally:
        await c.close()
        stop.set()
        listener.close()
        os.close(fd)

"""Fixtures for the RouterOS API simulator tests: a running sim and a raw-socket client."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from hil.sims.routeros import RouterOSSim
from hil.sims.routeros.wire import encode_sentence, read_sentence_sync

USER, PASSWORD = "agent", "s3cret"


class RawClient:
    """Speaks the wire protocol by hand, so tests see exactly what the sim sends."""

    def __init__(self, address: tuple[str, int], timeout: float = 3.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)

    def send(self, *words: str) -> None:
        self.sock.sendall(encode_sentence(words))

    def read(self) -> list[str]:
        return read_sentence_sync(self.sock)

    def talk(self, *words: str) -> list[list[str]]:
        """Send one sentence; collect replies up to its !done (or a !fatal)."""
        self.send(*words)
        return self.until_done()

    def until_done(self, tag: str | None = None) -> list[list[str]]:
        out: list[list[str]] = []
        while True:
            sentence = self.read()
            out.append(sentence)
            if sentence[0] == "!fatal":
                return out
            if sentence[0] == "!done" and (tag is None or f".tag={tag}" in sentence):
                return out

    def login(self, user: str = USER, password: str = PASSWORD) -> list[list[str]]:
        return self.talk("/login", f"=name={user}", f"=password={password}")

    def closed(self) -> bool:
        """True when the peer has closed the connection (reads EOF)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def attrs(sentence: list[str]) -> dict[str, str]:
    out = {}
    for w in sentence[1:]:
        if w.startswith("="):
            k, _, v = w[1:].partition("=")
            out[k] = v
    return out


def rows(reply: list[list[str]]) -> list[dict[str, str]]:
    return [attrs(s) for s in reply if s[0] == "!re"]


@pytest.fixture(params=["7.18"])
def profile(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def sim(profile: str) -> Iterator[RouterOSSim]:
    with RouterOSSim(profile=profile, model="RB2011", user=USER, password=PASSWORD,
                     ping_time_scale=0.05) as s:
        yield s


@pytest.fixture
def raw(sim: RouterOSSim) -> Iterator[RawClient]:
    client = RawClient(sim.address)
    yield client
    client.close()


@pytest.fixture
def logged_in(raw: RawClient) -> RawClient:
    assert raw.login() == [["!done"]]
    return raw

"""Word length encoding at every boundary of the five ranges, pure and over a socket."""

from __future__ import annotations

import pytest

from hil.sims.routeros.wire import (
    WireError,
    decode_length,
    encode_length,
    encode_sentence,
    encode_word,
    prefix_size,
)

from .conftest import RawClient, attrs

# (length, exact prefix bytes) from the API page's table.
BOUNDARIES = [
    (0x00, b"\x00"),
    (0x7F, b"\x7f"),
    (0x80, b"\x80\x80"),
    (0x3FFF, b"\xbf\xff"),
    (0x4000, b"\xc0\x40\x00"),
    (0x1FFFFF, b"\xdf\xff\xff"),
    (0x200000, b"\xe0\x20\x00\x00"),
    (0xFFFFFFF, b"\xef\xff\xff\xff"),
    (0x10000000, b"\xf0\x10\x00\x00\x00"),
    (0xFFFFFFFF, b"\xf0\xff\xff\xff\xff"),
]


@pytest.mark.parametrize(("length", "prefix"), BOUNDARIES)
def test_length_prefix_at_boundaries(length: int, prefix: bytes) -> None:
    assert encode_length(length) == prefix
    assert prefix_size(prefix[0]) == len(prefix)
    assert decode_length(prefix) == length


def test_reserved_control_bytes_and_out_of_range() -> None:
    for first in (0xF8, 0xFF):
        with pytest.raises(WireError):
            prefix_size(first)
    with pytest.raises(WireError):
        encode_length(0x1_0000_0000)
    with pytest.raises(WireError):
        encode_length(-1)


def test_words_are_byte_exact() -> None:
    word = bytes(range(256)).decode("latin-1")
    encoded = encode_word(word)
    assert encoded[:2] == b"\x81\x00" and encoded[2:] == bytes(range(256))
    assert encode_sentence(["/login"]) == b"\x06/login\x00"


@pytest.mark.parametrize("length", [0x7F, 0x80, 0x3FFF, 0x4000, 0x1FFFFF, 0x200000])
def test_server_encodes_and_decodes_each_range(logged_in: RawClient, length: int) -> None:
    """A comment of `length` bytes goes in and comes back; the reply word's prefix is exact."""
    value = "x" * (length - len("=comment="))
    reply = logged_in.talk("/ip/firewall/address-list/add", "=list=big", "=address=10.9.9.9",
                           f"=comment={value}")
    assert reply[0][0] == "!done", reply
    logged_in.send("/ip/firewall/address-list/print", "=.proplist=comment")
    # Read the raw bytes of the !re sentence: "!re" word, then the comment word.
    sock = logged_in.sock
    head = _recv(sock, 4)
    assert head == b"\x03!re"
    expected = encode_length(length)
    assert _recv(sock, len(expected)) == expected
    assert _recv(sock, length).decode() == f"=comment={value}"
    assert _recv(sock, 1) == b"\x00"
    assert logged_in.read() == ["!done"]


def test_server_accepts_non_minimal_five_byte_prefix(logged_in: RawClient) -> None:
    """Decoding goes by the first byte, so a 0xF0-prefixed short word is fine."""
    word = b"=list=five"
    payload = (encode_word("/ip/firewall/address-list/add") + b"\xf0" +
               len(word).to_bytes(4, "big") + word + encode_word("=address=10.1.1.1") + b"\x00")
    logged_in.sock.sendall(payload)
    assert logged_in.read()[0] == "!done"
    got = logged_in.talk("/ip/firewall/address-list/print", "?list=five")
    assert attrs(got[0])["address"] == "10.1.1.1"


def test_non_latin_bytes_round_trip(logged_in: RawClient) -> None:
    comment = "caf\u00e9 \u00ff\u0001"  # latin-1 decoded bytes e9, ff, 01
    logged_in.talk("/ip/firewall/address-list/add", "=list=b", "=address=10.2.2.2",
                   f"=comment={comment}")
    got = logged_in.talk("/ip/firewall/address-list/print", "?list=b", "=.proplist=comment")
    assert attrs(got[0])["comment"] == comment


def _recv(sock, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf

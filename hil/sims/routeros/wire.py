"""RouterOS API wire format: length-prefixed words, sentences ended by an empty word.

Evidence: help.mikrotik.com "API" page, section "API words" (mirrored in the old wiki
Manual:API): a word is its length then its bytes; the length takes 1 to 5 bytes:

    0 <= len <= 0x7F               1 byte   len
    0x80 <= len <= 0x3FFF          2 bytes  len | 0x8000
    0x4000 <= len <= 0x1FFFFF      3 bytes  len | 0xC00000
    0x200000 <= len <= 0xFFFFFFF   4 bytes  len | 0xE0000000
    len >= 0x10000000              5 bytes  0xF0 then len as four bytes

Bytes are in network order. A first byte >= 0xF8 is a reserved control byte. A
sentence is a run of words closed by a zero-length word; empty sentences are ignored.

Words are carried as `str` decoded with latin-1, so every byte value survives a
round trip unchanged (the API itself is encoding-agnostic: it counts bytes).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

MAX_WORD_LEN = 0xFFFFFFFF
WIRE_ENCODING = "latin-1"


class WireError(Exception):
    """The byte stream is not valid API framing (reserved control byte, word too long)."""


def encode_length(length: int) -> bytes:
    if length < 0 or length > MAX_WORD_LEN:
        raise WireError(f"word length out of range: {length}")
    if length < 0x80:
        return length.to_bytes(1, "big")
    if length < 0x4000:
        return (length | 0x8000).to_bytes(2, "big")
    if length < 0x200000:
        return (length | 0xC00000).to_bytes(3, "big")
    if length < 0x10000000:
        return (length | 0xE0000000).to_bytes(4, "big")
    return b"\xf0" + length.to_bytes(4, "big")


def prefix_size(first_byte: int) -> int:
    """How many bytes the length prefix takes, judged by its first byte."""
    if first_byte < 0x80:
        return 1
    if first_byte < 0xC0:
        return 2
    if first_byte < 0xE0:
        return 3
    if first_byte < 0xF0:
        return 4
    if first_byte < 0xF8:
        return 5
    raise WireError(f"reserved control byte 0x{first_byte:02X}")


def decode_length(prefix: bytes) -> int:
    """Decode a complete length prefix (exactly `prefix_size(prefix[0])` bytes)."""
    size = prefix_size(prefix[0])
    if len(prefix) != size:
        raise WireError(f"length prefix needs {size} bytes, got {len(prefix)}")
    if size == 1:
        return prefix[0]
    if size == 2:
        return int.from_bytes(prefix, "big") & 0x3FFF
    if size == 3:
        return int.from_bytes(prefix, "big") & 0x1FFFFF
    if size == 4:
        return int.from_bytes(prefix, "big") & 0xFFFFFFF
    return int.from_bytes(prefix[1:], "big")


def to_bytes(word: str | bytes) -> bytes:
    return word if isinstance(word, bytes) else word.encode(WIRE_ENCODING)


def encode_word(word: str | bytes) -> bytes:
    data = to_bytes(word)
    return encode_length(len(data)) + data


def encode_sentence(words: Iterable[str | bytes]) -> bytes:
    return b"".join(encode_word(w) for w in words) + b"\x00"


async def read_word(reader: asyncio.StreamReader, max_len: int = MAX_WORD_LEN) -> bytes:
    first = await reader.readexactly(1)
    size = prefix_size(first[0])
    prefix = first + (await reader.readexactly(size - 1) if size > 1 else b"")
    length = decode_length(prefix)
    if length > max_len:
        raise WireError(f"word of {length} bytes exceeds the limit of {max_len}")
    return await reader.readexactly(length) if length else b""


async def read_sentence(reader: asyncio.StreamReader, max_len: int = MAX_WORD_LEN) -> list[str]:
    """Read words up to the empty word. Raises asyncio.IncompleteReadError at EOF."""
    words: list[str] = []
    while True:
        word = await read_word(reader, max_len)
        if not word:
            return words
        words.append(word.decode(WIRE_ENCODING))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return bytes(buf)


def read_sentence_sync(sock: socket.socket) -> list[str]:
    """Blocking reader for raw-socket clients (tests, tools). Honours the socket timeout."""
    words: list[str] = []
    while True:
        first = _recv_exact(sock, 1)
        size = prefix_size(first[0])
        prefix = first + (_recv_exact(sock, size - 1) if size > 1 else b"")
        length = decode_length(prefix)
        if length == 0:
            return words
        words.append(_recv_exact(sock, length).decode(WIRE_ENCODING))

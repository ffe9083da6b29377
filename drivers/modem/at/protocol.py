"""What an AT command returns, and how a reply ends: pure V.250 / 3GPP TS 27.007 framing.

Shared by the serial `AtChannel` and by anything else that carries AT commands (MikroTik's
`at-chat`), so the generic driver and the vendor plugins run over either.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from drivers.errors import DeviceReplyError

#: 3GPP TS 27.007 section 9.2: +CME ERROR numbers that matter to us, with their texts
#: (the verbose form, AT+CMEE=2, sends the text instead of the number).
CME_ERRORS: dict[int, str] = {
    0: "phone failure",
    3: "operation not allowed",
    4: "operation not supported",
    5: "PH-SIM PIN required",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    40: "network personalization PIN required",
    100: "unknown",
}
_CME_BY_TEXT = {text.lower(): code for code, text in CME_ERRORS.items()}

#: Final result codes (V.250 section 5.7) that end any command.
_FINALS_ALWAYS = ("OK", "ERROR")
#: Final results that end only a dial or answer command; elsewhere they are unsolicited.
_FINALS_CALL = ("NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE", "CONNECT")


@dataclass(frozen=True)
class AtResponse:
    command: str
    #: Information lines of the reply, without echo, blank lines or unsolicited codes.
    lines: tuple[str, ...]
    final: str = "OK"
    #: Everything that came while the command was in flight, as it came (echo, URCs ...).
    raw: str = ""

    def prefixed(self, prefix: str) -> list[str]:
        """The lines that start with `prefix` (e.g. "+CSQ:"), in order."""
        return [line for line in self.lines if line.startswith(prefix)]

    def text(self) -> str:
        return "\n".join(self.lines)


class AtError(DeviceReplyError):
    """The modem answered ERROR, +CME ERROR or +CMS ERROR (or a call result) to a command."""

    def __init__(
        self,
        command: str,
        final: str,
        *,
        raw: str = "",
        kind: str = "error",
        code: int | None = None,
        text: str | None = None,
    ) -> None:
        what = final if text is None or text in final else f"{final} ({text})"
        super().__init__(f"The modem answered {what} to {command}.", raw=raw or final)
        self.command = command
        self.final = final
        self.kind = kind  # "error", "cme", "cms" or "call"
        self.code = code
        self.text = text


class AtCommander(Protocol):
    """Anything that sends one AT command at a time and returns its reply."""

    async def command(
        self,
        cmd: str,
        *,
        timeout_s: float | None = None,
        prefix: str | None = None,
        accept: Callable[[str], bool] | None = None,
    ) -> AtResponse:
        """Send `cmd`; return the reply on OK, raise AtError on an error result.

        `prefix` names the reply's own lines ("+CEREG:"); by default it is derived from the
        command. Lines with that prefix belong to the reply even when the same prefix is
        also an unsolicited code, unless `accept` says a line is not the reply's.
        """
        ...


def classify_final(line: str, command: str = "") -> tuple[str, int | None, str | None] | None:
    """("ok"|"error"|"cme"|"cms"|"call", code, text) when `line` ends a command, else None.

    Call results (NO CARRIER, BUSY ...) end only ATD/ATA; elsewhere they are unsolicited.
    """
    s = line.strip()
    if s == "OK":
        return ("ok", None, None)
    if s == "ERROR":
        return ("error", None, None)
    for tag, kind in (("+CME ERROR:", "cme"), ("+CMS ERROR:", "cms")):
        if s.startswith(tag):
            value = s[len(tag) :].strip().strip('"')
            if value.isdigit():
                code = int(value)
                return (kind, code, CME_ERRORS.get(code) if kind == "cme" else None)
            code_from_text = _CME_BY_TEXT.get(value.lower()) if kind == "cme" else None
            return (kind, code_from_text, value or None)
    upper = command.strip().upper()
    if upper.startswith(("ATD", "ATA")) and s in _FINALS_CALL:
        return ("call", None, s)
    return None


def is_final(line: str, command: str = "") -> bool:
    return classify_final(line, command) is not None


def error_for(command: str, final: str, raw: str = "") -> AtError:
    kind, code, text = classify_final(final, command) or ("error", None, None)
    return AtError(command, final.strip(), raw=raw, kind=kind, code=code, text=text)


_PREFIX_RE = re.compile(r"^AT([+!#$%^*][A-Z0-9_]+)", re.IGNORECASE)


def reply_prefix(command: str) -> str | None:
    """The prefix of a command's own reply lines: "AT+CEREG?" -> "+CEREG:", "AT!GSTATUS?" ->
    "!GSTATUS:", "AT#RFSTS" -> "#RFSTS:"; None for basic commands (ATI, ATE0)."""
    m = _PREFIX_RE.match(command.strip())
    if m is None:
        return None
    return m.group(1).upper() + ":"

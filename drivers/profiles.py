"""Router firmware profiles: firmware-profiles/router/<os>/*.toml, loaded, validated, matched.

Two kinds of file (see firmware-profiles/router/routeros/README.md):

- `kind = "model"`: one hardware model: board names it answers to, architecture, memory,
  container support, where the LTE modem is (an Ethernet port or a built-in interface);
- `kind = "os"`: one OS line (RouterOS 6.49, 7.x): its version range, how it spells
  policy routing, and its quirks, each valid from a version (`since`) and each citing
  its evidence.

A router is matched from what it says about itself (RouterOS: `/system/resource`
board-name and version, `/system/routerboard` model). `parse_*` and `match` are pure;
`load_router_profiles` reads the files. Modem profiles live in drivers/modem/profiles.py.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.errors import NeedsHumanError, UnsupportedError

#: The repository's profiles; CPE_AGENT_PROFILES_DIR points elsewhere (packaged installs).
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "firmware-profiles"

Version = tuple[int, ...]


def profiles_dir() -> Path:
    env = os.environ.get("CPE_AGENT_PROFILES_DIR")
    return Path(env) if env else DEFAULT_DIR


def parse_version(text: str) -> Version:
    """"7.18.2" -> (7, 18, 2); raises ValueError for anything else."""
    parts = text.strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class Quirk:
    name: str
    value: Any
    since: Version | None
    #: Versions this quirk applies before (exclusive), when it was undone.
    until: Version | None
    why: str
    evidence: tuple[str, ...]

    def applies(self, version: Version) -> bool:
        if self.since is not None and version < self.since:
            return False
        return not (self.until is not None and version >= self.until)


@dataclass(frozen=True)
class OsLine:
    os: str
    line: str
    min_version: Version
    #: First version no longer in this line (exclusive); None: open-ended.
    below_version: Version | None
    #: How the line spells policy routing: "routing-table" (v7) or "routing-mark" (v6).
    routing: str
    quirks: tuple[Quirk, ...]
    checked_against: str
    source: str = ""

    def covers(self, version: Version) -> bool:
        if version < self.min_version:
            return False
        return self.below_version is None or version < self.below_version


@dataclass(frozen=True)
class ModelProfile:
    os: str
    key: str
    name: str
    board_names: tuple[str, ...]
    architecture: str
    memory_mb: int
    container_support: bool
    #: Where the provider's LTE modem is: an Ethernet port ("ether10") or built in ("lte1").
    lte_interface: str
    lte_kind: str  # "ethernet-modem" | "built-in"
    #: Whether the LTE interface's byte counters include the Ethernet header.
    lte_counts_frames: bool
    os_lines: tuple[str, ...]
    notes: tuple[str, ...]
    evidence: tuple[str, ...]
    checked_against: str
    source: str = ""

    def answers_to(self, board_name: str) -> bool:
        wanted = board_name.strip().lower()
        return any(fnmatch.fnmatchcase(wanted, p.lower()) for p in self.board_names)


@dataclass(frozen=True)
class RouterProfile:
    """One router as matched: its OS line and version, and its model when known."""

    os_line: OsLine
    version: Version
    model: ModelProfile | None
    board_name: str

    def quirk(self, name: str, default: Any = None) -> Any:
        """The value of a quirk at this version (the latest `since` that applies wins)."""
        value = default
        best: Version = ()
        for q in self.os_line.quirks:
            if q.name == name and q.applies(self.version) and (q.since or ()) >= best:
                value, best = q.value, q.since or ()
        return value

    def describe(self) -> str:
        """One line for a person (the log, `RouterState.profile`): which model, OS line
        and version were matched, and from which files, so a wrong match can be traced to
        the file that made it. E.g. "RB2011UiAS on routeros 7.18.2 (line 7): rb2011.toml,
        os-7.toml"; an unknown board says so and names only the OS line's file."""
        version = ".".join(map(str, self.version))
        line = self.os_line
        if self.model is None:
            return (f"unknown model {self.board_name!r} on {line.os} {version} "
                    f"(line {line.line} defaults): {line.source or '?'}")
        return (f"{self.model.name} on {line.os} {version} (line {line.line}): "
                f"{self.model.source or '?'}, {line.source or '?'}")


@dataclass(frozen=True)
class ProfileSet:
    os_lines: tuple[OsLine, ...] = ()
    models: tuple[ModelProfile, ...] = ()
    problems: tuple[str, ...] = field(default=())


# --- parsing (pure) -----------------------------------------------------------------


def _text_list(data: Mapping[str, Any], key: str, where: str, required: bool = True
               ) -> tuple[str, ...]:
    value = data.get(key, [] if not required else None)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {key} must be a list of strings")
    if required and not value:
        raise ValueError(f"{where}: {key} must not be empty")
    return tuple(value)


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ValueError(f"{where}: {key} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def parse_quirk(data: Mapping[str, Any], where: str) -> Quirk:
    name = _need(data, "name", str, where)
    where = f"{where} quirk {name}"
    if "value" not in data:
        raise ValueError(f"{where}: value is missing")
    evidence = _text_list(data, "evidence", where)
    return Quirk(
        name=name,
        value=data["value"],
        since=parse_version(data["since"]) if "since" in data else None,
        until=parse_version(data["until"]) if "until" in data else None,
        why=_need(data, "why", str, where),
        evidence=evidence,
    )


def parse_os_line(data: Mapping[str, Any], source: str) -> OsLine:
    where = source
    routing = _need(data, "routing", str, where)
    if routing not in ("routing-table", "routing-mark"):
        raise ValueError(f"{where}: routing must be routing-table or routing-mark")
    below = data.get("below_version")
    return OsLine(
        os=_need(data, "os", str, where),
        line=_need(data, "line", str, where),
        min_version=parse_version(_need(data, "min_version", str, where)),
        below_version=parse_version(below) if below else None,
        routing=routing,
        quirks=tuple(parse_quirk(q, where) for q in data.get("quirks", [])),
        checked_against=_need(data, "checked_against", str, where),
        source=source,
    )


def parse_model(data: Mapping[str, Any], source: str) -> ModelProfile:
    where = source
    lte_kind = _need(data, "lte_kind", str, where)
    if lte_kind not in ("ethernet-modem", "built-in"):
        raise ValueError(f"{where}: lte_kind must be ethernet-modem or built-in")
    return ModelProfile(
        os=_need(data, "os", str, where),
        key=_need(data, "key", str, where),
        name=_need(data, "name", str, where),
        board_names=_text_list(data, "board_names", where),
        architecture=_need(data, "architecture", str, where),
        memory_mb=_need(data, "memory_mb", int, where),
        container_support=_need(data, "container_support", bool, where),
        lte_interface=_need(data, "lte_interface", str, where),
        lte_kind=lte_kind,
        lte_counts_frames=_need(data, "lte_counts_frames", bool, where),
        os_lines=_text_list(data, "os_lines", where),
        notes=_text_list(data, "notes", where, required=False),
        evidence=_text_list(data, "evidence", where),
        checked_against=_need(data, "checked_against", str, where),
        source=source,
    )


def parse_profiles(documents: Iterable[tuple[str, Mapping[str, Any]]]) -> ProfileSet:
    """Validate (source, TOML data) pairs; a bad file is a problem, not a crash."""
    lines: list[OsLine] = []
    models: list[ModelProfile] = []
    problems: list[str] = []
    for source, data in documents:
        try:
            kind = data.get("kind")
            if kind == "os":
                lines.append(parse_os_line(data, source))
            elif kind == "model":
                models.append(parse_model(data, source))
            else:
                raise ValueError(f"{source}: kind must be 'os' or 'model'")
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))
    return ProfileSet(tuple(lines), tuple(models), tuple(problems))


def match(profiles: ProfileSet, os_name: str, version: Version, board_names: Sequence[str]
          ) -> RouterProfile:
    """The profile for a router that says it runs `os_name` `version` on a board with one
    of `board_names`. UnsupportedError when no OS line covers the version; an unknown
    model is allowed (model None): the driver does not need it to work."""
    line = next((ln for ln in profiles.os_lines if ln.os == os_name and ln.covers(version)),
                None)
    shown = ".".join(map(str, version))
    if line is None:
        known = ", ".join(sorted(ln.line for ln in profiles.os_lines if ln.os == os_name))
        raise UnsupportedError(
            f"{os_name} {shown} is not supported (the agent knows the {known or 'no'} "
            "lines); upgrade the router to a supported release."
        )
    board = next((b for b in board_names if b), "")
    model = None
    for candidate in profiles.models:
        if candidate.os == os_name and any(candidate.answers_to(b) for b in board_names if b):
            model = candidate
            break
    return RouterProfile(line, version, model, board)


# --- loading (I/O) ------------------------------------------------------------------


def load_router_profiles(os_name: str, base: Path | None = None) -> ProfileSet:
    root = (base or profiles_dir()) / "router" / os_name
    documents: list[tuple[str, Mapping[str, Any]]] = []
    problems: list[str] = []
    for path in sorted(root.glob("*.toml")):
        try:
            documents.append((path.name, tomllib.loads(path.read_text(encoding="utf-8"))))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{path.name}: {exc}")
    parsed = parse_profiles(documents)
    if not parsed.os_lines and not problems:
        raise NeedsHumanError(
            f"No {os_name} firmware profiles in {root}; reinstall cpe-agent or set "
            "CPE_AGENT_PROFILES_DIR to its firmware-profiles directory."
        )
    return ProfileSet(parsed.os_lines, parsed.models, (*problems, *parsed.problems))

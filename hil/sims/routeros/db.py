"""The configuration database: menus of items, generic over the specs in menus.py.

Every API command that touches configuration lands here and either returns a value
or raises `Trap` carrying the exact `!trap` sentences RouterOS sends. Thread-safe:
the API server (its own thread) and the side channel (test threads) share it.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from . import query
from .menus import MenuSpec, Tree
from .profiles import Profile

Listener = Callable[[str, dict[str, str]], None]

# Evidence for each message: docs/sims-routeros.md, "Trap messages".
NO_SUCH_ITEM = "no such item (4)"
CANNOT_CHANGE_BUILTIN = "failure: cannot change builtin"
CANNOT_REMOVE_BUILTIN = "failure: cannot remove builtin"
CANNOT_MOVE_BUILTIN = "failure: cannot move builtin"
NAME_EXISTS = "failure: item with such name already exists"
COUNTERS = {
    "/interface": ("rx-byte", "tx-byte", "rx-packet", "tx-packet", "rx-drop", "tx-drop",
                   "tx-queue-drop", "rx-error", "tx-error", "link-downs"),
    "/ip/firewall/filter": ("bytes", "packets"),
    "/ip/firewall/nat": ("bytes", "packets"),
    "/ip/firewall/mangle": ("bytes", "packets"),
}


class Trap(Exception):
    """One or more `!trap` sentences (message, category) followed by `!done`."""

    def __init__(self, message: str, category: str | None = None) -> None:
        super().__init__(message)
        self.traps: list[tuple[str, str | None]] = [(message, category)]

    @classmethod
    def many(cls, *traps: tuple[str, str | None]) -> Trap:
        t = cls(*traps[0])
        t.traps = list(traps)
        return t


@dataclass
class Item:
    id: int
    props: dict[str, str]
    fixed: bool = False  # cannot be changed (builtin / dynamic)
    permanent: bool = False  # cannot be removed
    persistent: bool = True  # survives a reboot
    expires_at: float | None = None  # monotonic deadline (connections, timed address-lists)
    extra: dict[str, object] = field(default_factory=dict)


def format_duration(seconds: float) -> str:
    """RouterOS style: 1w2d3h4m5s, zero parts left out, '0s' for nothing."""
    s = max(0, int(seconds))
    parts = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    if s or not parts:
        parts.append(f"{s}s")
    return "".join(parts)


_DUR = re.compile(r"(\d+(?:\.\d+)?)(ms|us|w|d|h|m|s)?")


def parse_duration(text: str) -> float:
    """Accepts 300, 5m, 1h30m, 1d, 00:05:00, 1d00:05:00 and 10ms."""
    text = text.strip()
    days = 0.0
    m = re.fullmatch(r"(?:(\d+)d)?\s*(\d+):(\d{2}):(\d{2})", text)
    if m:
        days = float(m.group(1) or 0)
        return days * 86400 + int(m.group(2)) * 3600 + int(m.group(3)) * 60 + int(m.group(4))
    total, pos = 0.0, 0
    scale = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    for m in _DUR.finditer(text):
        if m.start() != pos:
            raise ValueError(text)
        total += float(m.group(1)) * scale[m.group(2) or "s"]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(text)
    return total


def format_id(n: int) -> str:
    return f"*{n:X}"


class ConfigDB:
    def __init__(self, profile: Profile, tree: Tree, clock: Callable[[], float] = time.monotonic):
        self.profile = profile
        self.tree = tree
        self.clock = clock
        self.lock = threading.RLock()
        self.items: dict[str, list[Item]] = {p: [] for p in tree.menus}
        self.next_id: dict[str, int] = dict.fromkeys(tree.menus, 1)
        self.listeners: list[Listener] = []
        # Per-menu hooks that fill in live values (uptime, remaining timeouts) at print time.
        self.render_hooks: dict[str, Callable[[Item, dict[str, str]], None]] = {}

    # ---- internal helpers -------------------------------------------------------

    def spec(self, path: str) -> MenuSpec:
        return self.tree.menus[path]

    def insert(self, path: str, props: Mapping[str, str], *, index: int | None = None,
               **flags: object) -> Item:
        """Add an item without any checks (seeding, side channel)."""
        with self.lock:
            item = Item(self.next_id[path], dict(props), **flags)  # type: ignore[arg-type]
            self.next_id[path] += 1
            lst = self.items[path]
            lst.insert(len(lst) if index is None else index, item)
            self._notify(path, item)
            return item

    def _purge(self, path: str) -> None:
        now = self.clock()
        lst = self.items[path]
        dead = [i for i in lst if i.expires_at is not None and i.expires_at <= now]
        for item in dead:
            lst.remove(item)
            self._notify_dead(path, item)

    def _notify(self, path: str, item: Item) -> None:
        if self.listeners:
            rendered = self.render(path, item)
            for cb in list(self.listeners):
                cb(path, rendered)

    def _notify_dead(self, path: str, item: Item) -> None:
        for cb in list(self.listeners):
            cb(path, {".id": format_id(item.id), ".dead": "true"})

    def normalise(self, spec: MenuSpec, name: str, value: str) -> str:
        prop = spec.props.get(name)
        if prop is not None and prop.kind == "bool":
            low = value.lower()
            if low in ("yes", "true", ""):
                return "true"
            if low in ("no", "false"):
                return "false"
        return value

    def render(self, path: str, item: Item) -> dict[str, str]:
        spec = self.spec(path)
        out: dict[str, str] = {} if spec.singleton else {".id": format_id(item.id)}
        for name, prop in spec.props.items():
            if prop.hidden or name == "place-before":
                continue
            value = item.props.get(name, prop.default)
            if value is not None:
                out[name] = value
        if item.expires_at is not None and "timeout" in spec.props:
            out["timeout"] = format_duration(item.expires_at - self.clock())
        hook = self.render_hooks.get(path)
        if hook:
            hook(item, out)
        return out

    def find(self, path: str, ref: str) -> Item | None:
        spec = self.spec(path)
        for item in self.items[path]:
            if ref.startswith("*"):
                if format_id(item.id).upper() == ref.upper():
                    return item
            elif spec.key and item.props.get(spec.key) == ref:
                return item
        return None

    def _resolve(self, path: str, args: Mapping[str, str]) -> list[Item]:
        raw = args.get(".id", args.get("numbers"))
        if raw is None:
            if self.profile.v7:
                # socialwifi/RouterOS-api#92 (7.11.2): a set without an id traps this.
                raise Trap("missing =.id=")
            return []  # 6.49 (same issue): "will just not work without any error"
        found: list[Item] = []
        for ref in raw.split(","):
            item = self.find(path, ref.strip())
            if item is None:
                raise Trap(NO_SUCH_ITEM)
            found.append(item)
        return found

    def _unknown(self, name: str) -> Trap:
        if self.profile.names_unknown_parameter:
            return Trap(f"unknown parameter {name}")
        return Trap("unknown parameter")

    def _check_args(self, spec: MenuSpec, args: Mapping[str, str], allowed: Iterable[str]) -> None:
        extra = set(allowed)
        for name, value in args.items():
            if name in extra:
                continue
            if name == "place-before" and not spec.ordered:
                raise self._unknown(name)
            if not spec.writable(name):
                raise self._unknown(name)
            ref = spec.props[name].ref
            if ref and ref in self.items and value:
                target = value[1:] if value.startswith("!") else value
                names = {i.props.get("name") for i in self.items[ref]}
                if target not in names:
                    # API page, "!trap" example: category 1, this exact wording.
                    raise Trap(f"input does not match any value of {name}", "1")

    def _check_unique(self, path: str, props: Mapping[str, str], skip: Item | None) -> None:
        spec = self.spec(path)
        others = [i for i in self.items[path] if i is not skip]
        if spec.unique_name and any(i.props.get("name") == props.get("name") for i in others):
            raise Trap(NAME_EXISTS)
        if path == "/ip/firewall/address-list":
            key = (props.get("list"), props.get("address"))
            if any((i.props.get("list"), i.props.get("address")) == key for i in others):
                raise Trap("failure: already have such entry")
        if path == "/ip/address":
            key = (props.get("address"), props.get("interface"))
            if any((i.props.get("address"), i.props.get("interface")) == key for i in others):
                raise Trap("failure: already have such address")

    # ---- commands -------------------------------------------------------------------

    def print(self, path: str, query_words: list[str], proplist: list[str] | None
              ) -> list[dict[str, str]]:
        spec = self.spec(path)
        with self.lock:
            self._purge(path)
            rows = [self.render(path, i) for i in self.items[path]]

        def norm(name: str, value: str) -> str:
            return self.normalise(spec, name, value)

        rows = [r for r in rows if query.matches(r, query_words, norm)]
        if proplist is not None:
            rows = [{k: r[k] for k in proplist if k in r} for r in rows]
        return rows

    def add(self, path: str, args: Mapping[str, str]) -> str:
        spec = self.spec(path)
        with self.lock:
            self._purge(path)
            self._check_args(spec, args, ())
            missing = [n for n, p in spec.props.items() if p.required and not args.get(n)]
            if missing:
                raise Trap("missing value(s) of argument(s) " + ", ".join(missing))
            props = {k: self.normalise(spec, k, v) for k, v in args.items() if k != "place-before"}
            self._check_unique(path, props, None)
            index = None
            if "place-before" in args:
                target = self.find(path, args["place-before"])
                if target is None:
                    raise Trap(NO_SUCH_ITEM)
                if target.fixed:
                    raise Trap(CANNOT_MOVE_BUILTIN)
                index = self.items[path].index(target)
            flags: dict[str, object] = {}
            if path == "/ip/firewall/address-list" and props.get("timeout"):
                props["dynamic"] = "true"
                flags.update(persistent=False,
                             expires_at=self.clock() + parse_duration(props["timeout"]))
            if path == "/ip/route" and "static" in spec.props:
                props.update(static="true", active="true")
            if path == "/ip/address" and "network" not in props and "/" in props["address"]:
                props["network"] = _network(props["address"])
            if "creation-time" in spec.props:
                props["creation-time"] = self.profile.format_datetime(datetime.now())
            item = self.insert(path, props, index=index, **flags)
            return format_id(item.id)

    def set(self, path: str, args: Mapping[str, str]) -> None:
        spec = self.spec(path)
        with self.lock:
            self._purge(path)
            targets = self.items[path][:1] if spec.singleton else self._resolve(path, args)
            self._check_args(spec, args, (".id", "numbers"))
            changes = {k: self.normalise(spec, k, v) for k, v in args.items()
                       if k not in (".id", "numbers")}
            for item in targets:
                if item.fixed and changes:
                    raise Trap(CANNOT_CHANGE_BUILTIN)
                self._check_unique(path, {**item.props, **changes}, item)
            for item in targets:
                if changes:
                    item.props.update(changes)
                    self._notify(path, item)

    def enable(self, path: str, args: Mapping[str, str], disabled: bool) -> None:
        self.set(path, {**{k: v for k, v in args.items() if k in (".id", "numbers")},
                        "disabled": "true" if disabled else "false"})

    def remove(self, path: str, args: Mapping[str, str]) -> None:
        with self.lock:
            self._purge(path)
            self._check_args(self.spec(path), args, (".id", "numbers"))
            targets = self._resolve(path, args)
            for item in targets:
                if item.permanent:
                    raise Trap(CANNOT_REMOVE_BUILTIN)
            for item in targets:
                self.items[path].remove(item)
                self._notify_dead(path, item)

    def move(self, path: str, args: Mapping[str, str]) -> None:
        with self.lock:
            self._check_args(self.spec(path), args, (".id", "numbers", "destination"))
            targets = self._resolve(path, args)
            lst = self.items[path]
            dest = None
            if args.get("destination"):
                dest = self.find(path, args["destination"])
                if dest is None:
                    raise Trap(NO_SUCH_ITEM)
            if any(i.fixed for i in targets) or (dest is not None and dest.fixed):
                raise Trap(CANNOT_MOVE_BUILTIN)
            for item in targets:
                lst.remove(item)
            at = lst.index(dest) if dest is not None and dest in lst else len(lst)
            lst[at:at] = targets

    def reset_counters(self, path: str, args: Mapping[str, str]) -> None:
        with self.lock:
            targets = self._resolve(path, args) if (".id" in args or "numbers" in args) \
                else list(self.items[path])
            for item in targets:
                for name in COUNTERS.get(path, ()):
                    if name in item.props:
                        item.props[name] = "0"

    # ---- whole-database operations (side channel) ------------------------------------

    def reboot(self) -> None:
        with self.lock:
            for path, lst in self.items.items():
                for item in [i for i in lst if not i.persistent]:
                    lst.remove(item)
                for item in lst:
                    for name in COUNTERS.get(path, ()):
                        if name in item.props:
                            item.props[name] = "0"

    def snapshot(self) -> dict[str, list[dict[str, str]]]:
        with self.lock:
            for path in self.items:
                self._purge(path)
            return {p: [self.render(p, i) for i in lst] for p, lst in self.items.items()}


def _network(address: str) -> str:
    return str(ipaddress.ip_interface(address).network.network_address)

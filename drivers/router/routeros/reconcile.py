"""Pure diff: the items the agent wants vs what the router holds -> add, set, remove, move.

Ownership is the comment tag alone (`cpe-agent:<role>`): an item without it is the
customer's and is never changed, moved or removed, even inside the agent's own chains or
lists (it is reported instead). No I/O, no clock, no logging.

Rows are as the API prints them: strings, `.id`, router order. A value RouterOS leaves
out is its default (DEFAULTS), so `passthrough` unset equals `passthrough=yes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from drivers.types import VoipPath

from . import commands as c
from .parse import to_bool, to_int

#: Properties that are an item's configuration (a hand-added matcher is drift); counters,
#: flags and read-only properties are left out.
_FIREWALL = frozenset({
    "chain", "action", "src-address", "dst-address", "src-address-list", "dst-address-list",
    "protocol", "src-port", "dst-port", "port", "in-interface", "out-interface",
    "in-interface-list", "out-interface-list", "connection-state", "connection-nat-state",
    "connection-mark", "connection-type", "packet-mark", "routing-mark", "layer7-protocol",
    "dscp", "src-mac-address", "tcp-flags", "packet-size", "content", "limit", "nth",
    "per-connection-classifier", "src-address-type", "dst-address-type", "time", "ttl",
    "new-routing-mark", "new-packet-mark", "new-connection-mark", "passthrough",
    "jump-target", "to-addresses", "to-ports", "reject-with", "ipsec-policy", "hotspot",
})
WATCHED: dict[str, frozenset[str]] = {
    c.ADDRESS_LIST: frozenset({"list", "address", "timeout"}),
    c.ROUTING_TABLE: frozenset({"name", "fib"}),
    c.ROUTE: frozenset({"dst-address", "gateway", "distance", "routing-table", "routing-mark",
                        "type", "pref-src", "check-gateway", "vrf-interface", "scope",
                        "target-scope"}),
    c.MANGLE: _FIREWALL,
    c.FILTER: _FIREWALL,
    c.NAT: _FIREWALL,
}
DEFAULTS = {
    "disabled": "false", "passthrough": "true", "log": "false", "distance": "1",
    "type": "unicast", "scope": "30", "target-scope": "10",
}
_BOOLS = frozenset({"disabled", "passthrough", "fib", "log"})
_ADDRESSES = frozenset({"address", "dst-address", "src-address", "gateway", "to-addresses",
                        "pref-src"})
_LISTS = frozenset({"connection-state", "dst-port", "src-port", "port"})


@dataclass(frozen=True)
class Op:
    """One API command: `kind` is add, set, remove or move on `menu` with `args`."""

    kind: str
    menu: str
    args: tuple[tuple[str, str], ...]
    #: The drift sentence this op repairs.
    why: str
    role: str | None = None


@dataclass(frozen=True)
class Plan:
    ops: tuple[Op, ...]
    #: One sentence per difference from the intended configuration (empty: in sync).
    drift: tuple[str, ...]
    #: Items the agent did not add inside its own chains, lists or table (never touched).
    foreign: tuple[str, ...]


def norm(name: str, value: str | None) -> str | None:
    """A value in a form that compares equal however RouterOS (or a human) spelled it."""
    if value is None:
        value = DEFAULTS.get(name)
    if value is None:
        return None
    value = value.strip()
    if name in _BOOLS:
        b = to_bool(value)
        return value if b is None else ("true" if b else "false")
    if name in _ADDRESSES and value.endswith("/32"):
        return value[:-3]
    if name in _LISTS and "," in value:
        return ",".join(sorted(p.strip() for p in value.split(",")))
    return value or None


def owned_role(row: Mapping[str, str]) -> str | None:
    """The role of one of the agent's configuration items (not its boot marker)."""
    role = c.role_of(row.get("comment"))
    if role is None or role == c.BOOT_ROLE or role.startswith(c.BOOT_ROLE + ":"):
        return None
    return role


def _dynamic(row: Mapping[str, str]) -> bool:
    return to_bool(row.get("dynamic")) is True


def differences(want: c.Desired, row: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(changed, extra): desired properties whose value differs -> the value the router
    has; configuration properties the agent did not set -> their value."""
    changed: dict[str, str] = {}
    desired = want.values
    for name, value in desired.items():
        if norm(name, row.get(name)) != norm(name, value):
            changed[name] = row.get(name) or "(unset)"
    if not want.switch and to_bool(row.get("disabled")) is True:
        changed["disabled"] = row.get("disabled", "")
    extra: dict[str, str] = {}
    for name in WATCHED.get(want.menu, frozenset()) - set(desired):
        found = row.get(name)
        if found and norm(name, found) != norm(name, None):
            extra[name] = found
    return changed, extra


def _anchor(rows: Sequence[Mapping[str, str]], chain: str | None) -> str | None:
    """The first of the customer's static rules in `chain`: agent rules go before it."""
    for row in rows:
        if row.get("chain") == chain and owned_role(row) is None and not _dynamic(row):
            return row.get(".id")
    return None


def _first_fasttrack(rows: Sequence[Mapping[str, str]]) -> int | None:
    for i, row in enumerate(rows):
        if (row.get("chain") == "forward" and row.get("action") == "fasttrack-connection"
                and owned_role(row) is None and to_bool(row.get("disabled")) is not True):
            return i
    return None


def plan(desired: Sequence[c.Desired], actual: Mapping[str, Sequence[Mapping[str, str]]],
         *, switch_on: bool, dialect: c.Dialect) -> Plan:
    """What to do so that the router holds exactly `desired` among the agent's items.

    Removals of stale items come first (references before what they reference), then
    adds and repairs in dependency order, then moves that put the filter rules back
    before the fasttrack rule. `switch_on` only decides how a missing switch is added.
    """
    removals: list[Op] = []
    reorders: list[Op] = []
    changes: list[Op] = []
    moves: list[Op] = []
    foreign: list[str] = []
    wanted_roles = {d.role for d in desired}
    for menu in dialect.menus:
        rows = list(actual.get(menu, ()))
        mine: dict[str, list[Mapping[str, str]]] = {}
        for row in rows:
            role = owned_role(row)
            if role is not None:
                mine.setdefault(role, []).append(row)
        for role, found in mine.items():
            noun = c.NOUNS[menu]
            if role not in wanted_roles:
                for row in found:
                    removals.append(_op("remove", menu, f"the {noun} {c.TAG}{role} is left "
                                        "over from an earlier policy", role, {".id": row[".id"]}))
            for row in found[1:]:
                removals.append(_op("remove", menu, f"the {noun} {c.TAG}{role} exists twice",
                                    role, {".id": row[".id"]}))
        fasttrack = _first_fasttrack(rows) if menu == c.FILTER else None
        here = [d for d in desired if d.menu == menu]
        reorders += _own_chain_order(here, rows, mine)
        for n, want in enumerate(here):
            found = mine.get(want.role, [])
            if not found:
                successor = None
                if want.chain in c.OWN_CHAINS:  # keep the chain's order: before the next one
                    successor = next((mine[d.role][0][".id"] for d in here[n + 1:]
                                      if d.chain == want.chain and d.role in mine), None)
                changes.append(_add(want, rows, switch_on, f"{want.describe()} is missing",
                                    place_before=successor))
                continue
            row = found[0]
            changed, extra = differences(want, row)
            misplaced = (want.placement == c.BEFORE_FASTTRACK and fasttrack is not None
                         and rows.index(row) > fasttrack)
            if extra:
                what = ", ".join(f"{k}={v}" for k, v in sorted(extra.items()))
                why = f"{want.describe()} has {what} added by hand"
                before = rows[fasttrack][".id"] if misplaced and fasttrack is not None \
                    else row[".id"]
                replacement = _add(want, rows, _switch_state(row), why,
                                   place_before=before if menu in c.ORDERED_MENUS else None)
                remove = _op("remove", menu, why, want.role, {".id": row[".id"]})
                # A rule is replaced add-first (no gap); a list entry or route remove-first
                # (RouterOS refuses a duplicate entry or table name).
                changes += [replacement, remove] if menu in c.ORDERED_MENUS \
                    else [remove, replacement]
                continue
            if changed:
                what = "; ".join(
                    f"{k}={v!r}, wanted {want.values.get(k, 'no')!r}"
                    for k, v in sorted(changed.items())
                )
                args = {".id": row[".id"]}
                args.update({k: want.values.get(k, "no") for k in changed})
                changes.append(_op("set", menu, f"{want.describe()} was changed: {what}",
                                   want.role, args))
            if misplaced and fasttrack is not None:
                moves.append(_op(
                    "move", menu,
                    f"{want.describe()} sits after the fasttrack rule, so fasttracked flows "
                    "would skip it", want.role,
                    {"numbers": row[".id"], "destination": rows[fasttrack][".id"]}))
        foreign += _foreign(menu, rows, dialect)
    ops = (tuple(reversed(_by_menu_order(removals, dialect))) + tuple(reorders)
           + tuple(changes) + tuple(moves))
    drift = tuple(dict.fromkeys(op.why for op in ops))
    return Plan(ops, drift, tuple(foreign))


def _own_chain_order(here: Sequence[c.Desired], rows: Sequence[Mapping[str, str]],
                     mine: Mapping[str, Sequence[Mapping[str, str]]]) -> list[Op]:
    """Moves that put the agent's rules in its own chains back in their order (the guard's
    drop must stay last; the primary-probe return first). Each rule goes before its
    successor, from the end, so they end up together and in order."""
    position = {row.get(".id"): i for i, row in enumerate(rows)}
    ops = []
    for chain in sorted(c.OWN_CHAINS):
        wanted = [d for d in here if d.chain == chain and d.role in mine]
        ids = [mine[d.role][0][".id"] for d in wanted]
        if sorted(ids, key=lambda i: position.get(i, 0)) == ids:
            continue
        why = f"the rules of chain {chain} are out of order"
        for k in range(len(ids) - 2, -1, -1):
            ops.append(_op("move", wanted[k].menu, why, wanted[k].role,
                           {"numbers": ids[k], "destination": ids[k + 1]}))
    return ops


def _by_menu_order(ops: list[Op], dialect: c.Dialect) -> list[Op]:
    order = {m: i for i, m in enumerate(dialect.menus)}
    return sorted(ops, key=lambda op: order.get(op.menu, 0))


def _switch_state(row: Mapping[str, str]) -> bool:
    return to_bool(row.get("disabled")) is not True


def _op(kind: str, menu: str, why: str, role: str | None, args: Mapping[str, str]) -> Op:
    return Op(kind, menu, tuple(args.items()), why, role)


def _add(want: c.Desired, rows: Sequence[Mapping[str, str]], switch_on: bool, why: str,
         place_before: str | None = None) -> Op:
    args = dict(want.props)
    if want.switch:
        args["disabled"] = "no" if switch_on else "yes"
    args["comment"] = want.tag
    if place_before is None and want.placement == c.BEFORE_FASTTRACK:
        place_before = _anchor(rows, "forward")
    elif place_before is None and want.placement == c.TOP_OF_CHAIN:
        place_before = _anchor(rows, want.chain)
    if place_before is not None:
        args["place-before"] = place_before
    return _op("add", want.menu, why, want.role, args)


def _foreign(menu: str, rows: Sequence[Mapping[str, str]], dialect: c.Dialect) -> list[str]:
    """Untagged items where only the agent's should be: reported, never touched."""
    out = []
    for row in rows:
        if c.role_of(row.get("comment")) is not None or _dynamic(row):
            continue
        where = None
        if menu in (c.MANGLE, c.FILTER) and row.get("chain") in (c.MARK_CHAIN, c.GUARD_CHAIN):
            where = f"the {menu.rsplit('/', 1)[-1]} chain {row.get('chain')}"
        elif menu == c.ADDRESS_LIST and row.get("list") in (c.VOIP_LIST, c.AGENT_LIST):
            where = f"the address list {row.get('list')}"
        elif menu == c.ROUTE and row.get(dialect.routing) == c.TABLE:
            where = f"the routing table {c.TABLE}"
        if where is not None:
            out.append(f"{where} holds an item the agent did not add ({row.get('.id')}); "
                       "the agent leaves it alone, check who added it")
    return out


# --- what the router says about the agent's items ------------------------------------


@dataclass(frozen=True)
class Installed:
    any_item: bool
    #: The switch rule's id and whether it is on (VoIP by LTE); None when it is missing.
    switch_id: str | None
    switch_on: bool | None
    blocked_packets: int
    blocked_bytes: int

    @property
    def path(self) -> VoipPath | None:
        if self.switch_on:
            return VoipPath.CELLULAR
        if self.any_item:
            return VoipPath.PRIMARY
        return None


def installed(actual: Mapping[str, Sequence[Mapping[str, str]]]) -> Installed:
    any_item = False
    switch_id = None
    switch_on = None
    packets = octets = 0
    for menu, rows in actual.items():
        for row in rows:
            role = owned_role(row)
            if role is None:
                continue
            any_item = True
            if menu == c.MANGLE and role == c.SWITCH_ROLE and switch_id is None:
                switch_id = row.get(".id")
                switch_on = _switch_state(row)
            if menu == c.FILTER and role == c.DROP_ROLE:
                packets = to_int(row.get("packets")) or 0
                octets = to_int(row.get("bytes")) or 0
    return Installed(any_item, switch_id, switch_on, packets, octets)


def owned_ids(actual: Mapping[str, Sequence[Mapping[str, str]]], dialect: c.Dialect
              ) -> list[tuple[str, list[str]]]:
    """(menu, ids) of every item the agent owns, in removal order: the switch first (so
    nothing is steered into a half-removed chain), the routing table last."""
    out: list[tuple[str, list[str]]] = []
    switch = [r[".id"] for r in actual.get(c.MANGLE, ()) if owned_role(r) == c.SWITCH_ROLE]
    if switch:
        out.append((c.MANGLE, switch))
    for menu in reversed(dialect.menus):
        ids = [r[".id"] for r in actual.get(menu, ())
               if owned_role(r) is not None and r[".id"] not in switch]
        if ids:
            out.append((menu, ids))
    return out

"""Reconcile, from tables: add what is missing, fix what drifted, remove what is stale,
and never name an untagged item in any command."""

from __future__ import annotations

from drivers.router.routeros import commands as c
from drivers.router.routeros import reconcile as r
from drivers.types import VoipPath, VoipPolicy

POLICY = VoipPolicy(primary_interface="ether1", cellular_interface="ether10",
                    cellular_gateway="192.168.5.1", lan_interfaces=("bridge",),
                    voip_prefixes=("203.0.113.10/32",))
DESIRED = c.build(POLICY, c.V7)
FILTER_DEFCONF = [
    {".id": "*1", "chain": "forward", "action": "passthrough", "dynamic": "true",
     "comment": "special dummy rule to show fasttrack counters"},
    {".id": "*2", "chain": "input", "action": "accept", "comment": "defconf: accept"},
    {".id": "*6", "chain": "forward", "action": "fasttrack-connection",
     "connection-state": "established,related", "comment": "defconf: fasttrack"},
    {".id": "*7", "chain": "forward", "action": "accept", "comment": "defconf: accept est"},
]
NAT_DEFCONF = [{".id": "*1", "chain": "srcnat", "action": "masquerade",
                "out-interface": "ether1", "comment": "defconf: masquerade"}]


def rows_for(desired: tuple[c.Desired, ...], menu: str, start: int = 0x100,
             switch_disabled: str = "true") -> list[dict[str, str]]:
    out = []
    for n, d in enumerate(x for x in desired if x.menu == menu):
        row = {".id": f"*{start + n:X}", **d.values, "comment": d.tag, "disabled": "false"}
        if d.switch:
            row["disabled"] = switch_disabled
        out.append(row)
    return out


def installed(**changes: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """A router holding exactly DESIRED, with the customer's defconf around it."""
    filt = rows_for(DESIRED, c.FILTER)
    forward = [x for x in filt if x["chain"] == "forward"]
    rest = [x for x in filt if x["chain"] != "forward"]
    actual = {
        c.ADDRESS_LIST: rows_for(DESIRED, c.ADDRESS_LIST),
        c.ROUTING_TABLE: [{".id": "*0", "name": "main", "fib": "true", "dynamic": "true"},
                          *rows_for(DESIRED, c.ROUTING_TABLE)],
        c.ROUTE: rows_for(DESIRED, c.ROUTE),
        c.MANGLE: rows_for(DESIRED, c.MANGLE),
        c.FILTER: [FILTER_DEFCONF[0], FILTER_DEFCONF[1], *forward, *FILTER_DEFCONF[2:], *rest],
        c.NAT: [*rows_for(DESIRED, c.NAT), *NAT_DEFCONF],
    }
    actual.update(changes)
    return actual


def plan(actual: dict[str, list[dict[str, str]]], switch_on: bool = False) -> r.Plan:
    return r.plan(DESIRED, actual, switch_on=switch_on, dialect=c.V7)


def untagged_ids(actual: dict[str, list[dict[str, str]]]) -> set[tuple[str, str]]:
    return {(m, row[".id"]) for m, rows in actual.items() for row in rows
            if c.role_of(row.get("comment")) is None}


def named_ids(p: r.Plan) -> set[tuple[str, str]]:
    """Every (menu, id) an op changes or removes (place-before/destination only anchor)."""
    out = set()
    for op in p.ops:
        args = dict(op.args)
        for key in (".id", "numbers"):
            if key in args:
                out.add((op.menu, args[key]))
    return out


def test_in_sync_means_no_ops_no_drift() -> None:
    p = plan(installed())
    assert p.ops == () and p.drift == () and p.foreign == ()


def test_a_fresh_router_gets_everything_in_dependency_order() -> None:
    actual = {c.FILTER: list(FILTER_DEFCONF), c.NAT: list(NAT_DEFCONF)}
    p = plan(actual)
    assert [op.kind for op in p.ops] == ["add"] * len(DESIRED)
    assert [dict(op.args)["comment"] for op in p.ops] == [d.tag for d in DESIRED]
    args = {dict(op.args)["comment"]: dict(op.args) for op in p.ops}
    # Forward rules go before the customer's first static forward rule (the fasttrack);
    # the dynamic dummy rule cannot be an anchor. NAT goes to the top of srcnat.
    assert args[f"{c.TAG}guard"]["place-before"] == "*6"
    assert args[f"{c.TAG}lte-replies"]["place-before"] == "*6"
    assert args[f"{c.TAG}masquerade"]["place-before"] == "*1"
    assert args[f"{c.TAG}switch"]["disabled"] == "yes"  # a new switch starts on PRIMARY
    assert "place-before" not in args[f"{c.TAG}{c.DROP_ROLE}"]
    assert named_ids(p) == set()
    assert p.drift[0] == f"the address-list entry {c.TAG}voip-list 203.0.113.10 is missing"


def test_a_missing_switch_comes_back_in_the_path_the_agent_last_set() -> None:
    mangle = [x for x in installed()[c.MANGLE] if x["comment"] != f"{c.TAG}switch"]
    p = plan(installed(**{c.MANGLE: mangle}), switch_on=True)
    assert [(op.kind, dict(op.args)["disabled"]) for op in p.ops] == [("add", "no")]


def test_the_switch_state_is_not_drift() -> None:
    on = rows_for(DESIRED, c.MANGLE, switch_disabled="false")
    assert plan(installed(**{c.MANGLE: on})).ops == ()
    assert r.installed(installed(**{c.MANGLE: on})).path is VoipPath.CELLULAR
    assert r.installed(installed()).path is VoipPath.PRIMARY
    assert r.installed({}).path is None


def test_changed_and_disabled_items_are_set_back() -> None:
    mangle = rows_for(DESIRED, c.MANGLE)
    rtp = next(x for x in mangle if x["comment"].endswith("mark-rtp@bridge"))
    rtp["dst-port"] = "10000-10100"
    rtp["disabled"] = "true"
    p = plan(installed(**{c.MANGLE: mangle}))
    assert [(op.kind, dict(op.args)) for op in p.ops] == [
        ("set", {".id": rtp[".id"], "dst-port": "10000-20000", "disabled": "no"})]
    assert "dst-port='10000-10100', wanted '10000-20000'" in p.drift[0]


def test_spelling_differences_are_not_drift() -> None:
    tables = [{".id": "*9", "name": c.TABLE, "fib": "yes", "comment": f"{c.TAG}table"}]
    lists = rows_for(DESIRED, c.ADDRESS_LIST)
    lists[0]["address"] = "203.0.113.10/32"
    mangle = rows_for(DESIRED, c.MANGLE)
    for row in mangle:
        row.pop("passthrough", None)  # unset: RouterOS' default (yes)
    p = plan(installed(**{c.ROUTING_TABLE: tables, c.ADDRESS_LIST: lists, c.MANGLE: mangle}))
    assert p.ops == ()


def test_a_hand_added_matcher_replaces_the_rule_in_place_add_first() -> None:
    filt = installed()[c.FILTER]
    guard = next(x for x in filt if x.get("comment") == f"{c.TAG}guard")
    guard["src-address"] = "192.168.88.99"
    p = plan(installed(**{c.FILTER: filt}))
    assert [op.kind for op in p.ops] == ["add", "remove"]
    assert dict(p.ops[0].args)["place-before"] == guard[".id"]
    assert dict(p.ops[1].args) == {".id": guard[".id"]}


def test_a_route_with_extras_is_removed_then_added() -> None:
    route = rows_for(DESIRED, c.ROUTE)
    route[0]["check-gateway"] = "ping"
    p = plan(installed(**{c.ROUTE: route}))
    assert [op.kind for op in p.ops] == ["remove", "add"]


def test_stale_and_duplicate_items_are_removed_references_first() -> None:
    mangle = rows_for(DESIRED, c.MANGLE)
    mangle.append({**mangle[0], ".id": "*F00"})  # the same tag twice
    tables = [*installed()[c.ROUTING_TABLE],
              {".id": "*9", "name": "cpe-agent-old", "comment": f"{c.TAG}table-old"}]
    nat = [*installed()[c.NAT], {".id": "*F1", "chain": "srcnat", "action": "masquerade",
                                 "comment": f"{c.TAG}old-nat"}]
    p = plan(installed(**{c.MANGLE: mangle, c.ROUTING_TABLE: tables, c.NAT: nat}))
    assert [(op.kind, op.menu, dict(op.args)[".id"]) for op in p.ops] == [
        ("remove", c.NAT, "*F1"), ("remove", c.MANGLE, "*F00"),
        ("remove", c.ROUTING_TABLE, "*9")]
    assert "left over from an earlier policy" in p.drift[0]


def test_rules_after_a_fasttrack_rule_are_moved_before_it() -> None:
    filt = rows_for(DESIRED, c.FILTER)
    forward = [x for x in filt if x["chain"] == "forward"]
    rest = [x for x in filt if x["chain"] != "forward"]
    order = [FILTER_DEFCONF[0], FILTER_DEFCONF[2], *forward, FILTER_DEFCONF[3], *rest]
    p = plan(installed(**{c.FILTER: order}))
    assert [(op.kind, dict(op.args)) for op in p.ops] == [
        ("move", {"numbers": x[".id"], "destination": "*6"}) for x in forward]
    assert all("sits after the fasttrack rule" in d for d in p.drift)


def test_untagged_items_are_never_named_and_foreign_ones_reported() -> None:
    foreign = {".id": "*F5", "chain": c.GUARD_CHAIN, "action": "accept"}
    filt = [*installed()[c.FILTER], foreign]
    lists = [*rows_for(DESIRED, c.ADDRESS_LIST),
             {".id": "*F6", "list": c.VOIP_LIST, "address": "198.51.100.7"}]
    routes = [*rows_for(DESIRED, c.ROUTE),
              {".id": "*F7", "dst-address": "0.0.0.0/0", "gateway": "198.51.100.1",
               "routing-table": c.TABLE}]
    actual = installed(**{c.FILTER: filt, c.ADDRESS_LIST: lists, c.ROUTE: routes})
    p = plan(actual)
    assert p.ops == ()
    assert len(p.foreign) == 3 and any("filter chain cpe-agent-lte-out" in f and "(*F5)" in f
                                       for f in p.foreign)
    # Even a plan that rebuilds everything names no untagged item.
    broken = {m: [x for x in rows if c.role_of(x.get("comment")) is None]
              for m, rows in actual.items()}
    assert named_ids(plan(broken)) & untagged_ids(actual) == set()


def test_owned_ids_removal_order_and_boot_marker_kept() -> None:
    actual = installed()
    actual[c.ADDRESS_LIST].append({".id": "*B0", "list": c.BOOT_LIST,
                                   "comment": f"{c.TAG}boot:0123abcd"})
    order = r.owned_ids(actual, c.V7)
    assert order[0][0] == c.MANGLE and len(order[0][1]) == 1  # the switch, first
    assert [m for m, _ in order][1:] == [c.NAT, c.FILTER, c.MANGLE, c.ROUTE, c.ROUTING_TABLE,
                                         c.ADDRESS_LIST]
    assert "*B0" not in order[-1][1]


def test_blocked_counters_come_from_the_drop_rule() -> None:
    filt = installed()[c.FILTER]
    drop = next(x for x in filt if x.get("comment") == f"{c.TAG}{c.DROP_ROLE}")
    drop.update(packets="3", bytes="180")
    found = r.installed(installed(**{c.FILTER: filt}))
    assert (found.blocked_packets, found.blocked_bytes) == (3, 180)


def test_own_chain_order_is_restored_and_missing_rules_go_in_place() -> None:
    filt = installed()[c.FILTER]
    chain = [x for x in filt if x["chain"] == c.GUARD_CHAIN]
    drop = chain[-1]
    assert drop["comment"] == f"{c.TAG}{c.DROP_ROLE}"
    reordered = [x for x in filt if x is not drop]
    reordered.insert(reordered.index(chain[0]), drop)  # the drop moved to the top by hand
    p = plan(installed(**{c.FILTER: reordered}))
    ids = [x[".id"] for x in chain]
    assert [(op.kind, dict(op.args)) for op in p.ops] == [
        ("move", {"numbers": ids[k], "destination": ids[k + 1]})
        for k in range(len(ids) - 2, -1, -1)]
    assert p.drift == (f"the rules of chain {c.GUARD_CHAIN} are out of order",)
    # A rule missing from the middle is added before its successor, not after the drop.
    missing = [x for x in filt if x.get("comment") != f"{c.TAG}allow-rtp"]
    p = plan(installed(**{c.FILTER: missing}))
    successor = next(x for x in filt if x.get("comment") == f"{c.TAG}allow-dscp-ef")
    assert [(op.kind, dict(op.args)["place-before"]) for op in p.ops] == [
        ("add", successor[".id"])]

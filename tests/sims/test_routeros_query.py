"""Query words evaluated as the API page's "Queries" section documents (pure, from tables)."""

from __future__ import annotations

import pytest

from hil.sims.routeros.query import matches

ETHER = {"name": "ether1", "type": "ether", "mtu": "1500"}
VLAN = {"name": "vlan5", "type": "vlan", "mtu": "1496", "comment": "voice"}
BRIDGE = {"name": "bridge", "type": "bridge", "mtu": "1500"}
ITEMS = [ETHER, VLAN, BRIDGE]

CASES = [
    ([], [ETHER, VLAN, BRIDGE]),
    (["?type=ether"], [ETHER]),
    (["?=type=ether"], [ETHER]),
    # The page's example: all ethernet and VLAN interfaces.
    (["?type=ether", "?type=vlan", "?#|"], [ETHER, VLAN]),
    # Its other example: non-empty comment.
    (["?>comment="], [VLAN]),
    (["?comment"], [VLAN]),
    (["?-comment"], [ETHER, BRIDGE]),
    (["?type=ether", "?#!"], [VLAN, BRIDGE]),
    (["?<mtu=1500"], [VLAN]),
    (["?>mtu=1496"], [ETHER, BRIDGE]),
    (["?mtu=1500", "?type=bridge", "?#&"], [BRIDGE]),
    # librouteros' Key.In: ==a, ==b, ==c, then "?#|" twice.
    (["?name=ether1", "?name=vlan5", "?name=nope", "?#|", "?#|"], [ETHER, VLAN]),
    # "." after another character pushes a copy of the top: (a, a) -> and -> a.
    (["?type=vlan", "?#.&"], [VLAN]),
    # Index then end of word replaces the stack with that value: push false, push true,
    # "1" keeps only the false one (index 1 = below top).
    (["?type=nope", "?mtu=1500", "?#1"], []),
    (["?type=ether", "?mtu=1500", "?#0"], [ETHER, BRIDGE]),
    # Index followed by a character pushes a copy; "0." pushes top, "." after index no-op.
    (["?type=vlan", "?#0.!|"], ITEMS),
    # A false anywhere on the stack fails the item (no operator combines them).
    (["?type=ether", "?mtu=1500"], [ETHER]),
    # Popping below the bottom yields the implicit trues.
    (["?type=vlan", "?#&&"], [VLAN]),
]


@pytest.mark.parametrize(("query", "expected"), CASES)
def test_query(query: list[str], expected: list[dict[str, str]]) -> None:
    assert [i for i in ITEMS if matches(i, query)] == expected


def test_normalise_hook_applies_to_compared_value() -> None:
    item = {"disabled": "false"}

    def norm(name: str, value: str) -> str:
        return {"no": "false", "yes": "true"}.get(value, value)

    assert matches(item, ["?disabled=no"], norm)
    assert not matches(item, ["?disabled=yes"], norm)

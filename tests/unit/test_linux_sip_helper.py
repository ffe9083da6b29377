"""The Linux driver's SIP helper judgement, from tables: rulesets as `nft -j list ruleset`
prints them (nft 1.0.6, captured on Linux 6.18 with nftables and iptables-nft 1.8.9) and
the two kernel facts (/proc/sys/net/netfilter/nf_conntrack_helper, /sys/module).

The reads themselves run against a real kernel in tests/netns/test_linux_sip_helper.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from drivers.router.linux import sip_helper

META = {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5",
                     "json_schema_version": 1}}


def ruleset(*items: dict[str, Any]) -> dict[str, Any]:
    return {"nftables": [META, *items]}


def ct_helper(kind: str, table: str = "t1", family: str = "inet") -> dict[str, Any]:
    """`nft add ct helper inet t1 h { type "sip" protocol udp; l3proto ip; }` read back."""
    return {"ct helper": {"family": family, "name": f"{kind}1", "table": table, "handle": 1,
                          "type": kind, "protocol": "udp", "l3proto": "ip"}}


def rule(table: str, *expr: dict[str, Any], family: str = "ip") -> dict[str, Any]:
    return {"rule": {"family": family, "table": table, "chain": "PREROUTING", "handle": 2,
                     "expr": list(expr)}}


UDP_5060 = {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                      "right": 5060}}
COUNTER = {"counter": {"packets": 0, "bytes": 0}}
#: `iptables -t raw -A PREROUTING -p udp --dport 5060 -j CT --helper sip` (iptables-nft).
XT_CT = {"xt": {"type": "target", "name": "CT"}}
#: `... -j CT --notrack`: iptables-nft translates it to a native statement.
NOTRACK = {"notrack": None}
#: `nft add rule inet t1 pre udp dport 5060 ct helper set "sip1"`.
ASSIGN = {"ct helper": "sip1"}
CUSTOMER_NAT = ruleset(
    {"table": {"family": "ip", "name": "customer_nat", "handle": 1}},
    rule("customer_nat", {"masquerade": None}),
)
#: The agent's own table holds no helper.
AGENT_ONLY = ruleset({"table": {"family": "inet", "name": "cpe_agent", "handle": 3}})


@pytest.mark.parametrize(("name", "document", "auto", "module", "on"), [
    # The ruleset alone.
    ("nothing at all", ruleset(), None, False, False),
    ("customer NAT, no helper", CUSTOMER_NAT, None, True, False),
    ("the agent's table only", AGENT_ONLY, None, True, False),
    ("a sip ct helper object", ruleset(ct_helper("sip")), None, True, True),
    ("... and the rule assigning it", ruleset(ct_helper("sip"), rule("t1", UDP_5060, ASSIGN)),
     None, True, True),
    ("a sip object in another family and table",
     ruleset(ct_helper("sip", table="fw4", family="inet")), "0", True, True),
    ("a sip object, type spelled in capitals", ruleset(ct_helper("SIP")), None, True, True),
    ("only an ftp ct helper object", ruleset(ct_helper("ftp")), None, True, False),
    ("ftp and sip objects", ruleset(ct_helper("ftp"), ct_helper("sip", table="t2")), None,
     True, True),
    ("the sip object wins over an unknown auto value", ruleset(ct_helper("sip")), "x", True,
     True),
    # iptables-nft: a CT target nft cannot look into.
    ("iptables-nft CT target (helper unknown)", ruleset(rule("raw", UDP_5060, COUNTER, XT_CT)),
     "0", True, None),
    ("older nft: nameless xt target ending a raw rule",
     ruleset(rule("raw", UDP_5060, COUNTER, {"xt": None})), None, True, None),
    ("nameless xt outside raw is not a CT target",
     ruleset(rule("mangle", UDP_5060, {"xt": None})), None, True, False),
    ("nameless xt match before a native verdict",
     ruleset(rule("raw", {"xt": None}, {"accept": None})), None, True, False),
    ("an xt match named CT is not a target",
     ruleset(rule("raw", {"xt": {"type": "match", "name": "CT"}}, {"accept": None})), None,
     True, False),
    ("CT --notrack is native, not a helper", ruleset(rule("raw", UDP_5060, COUNTER, NOTRACK)),
     None, True, False),
    ("a CT target next to a sip object", ruleset(ct_helper("sip"), rule("raw", XT_CT)), None,
     True, True),
    # Automatic assignment: /proc/sys/net/netfilter/nf_conntrack_helper and the module.
    ("auto-assignment on, sip module loaded", CUSTOMER_NAT, "1\n", True, True),
    ("auto-assignment on, no sip module", CUSTOMER_NAT, "1\n", False, False),
    ("auto-assignment off, sip module loaded", CUSTOMER_NAT, "0\n", True, False),
    ("sysctl absent (Linux 6.0+, or no conntrack here)", CUSTOMER_NAT, None, True, False),
    ("auto value unreadable, sip module loaded", CUSTOMER_NAT, "garbled", True, None),
    ("auto value unreadable, no sip module", CUSTOMER_NAT, "", False, False),
    ("auto-assignment on, module loaded, ruleset unreadable", None, "1", True, True),
    # The ruleset could not be read: cannot tell, unless auto-assignment settles it.
    ("ruleset unreadable", None, "0", True, None),
    ("ruleset unreadable, nothing else known", None, None, False, None),
    # Malformed documents are ignored item by item, never fatal.
    ("not an nft document", {"something": "else"}, None, False, False),
    ("items of the wrong shape", {"nftables": ["x", 3, {"rule": "y"}, {"ct helper": 1}]}, None,
     False, False),
])
def test_sip_helper_on(name: str, document: dict[str, Any] | None, auto: str | None,
                       module: bool, on: bool | None) -> None:
    assert sip_helper.sip_helper_on(document, auto, module) is on, name


@pytest.mark.parametrize(("text", "on"), [
    ("1\n", True), ("1", True), ("0\n", False), (None, False), ("2", None), ("", None),
])
def test_auto_assign_on(text: str | None, on: bool | None) -> None:
    assert sip_helper.auto_assign_on(text) is on


def test_scan_names_the_objects_and_counts_opaque_targets() -> None:
    document = ruleset(ct_helper("sip", table="fw4"), ct_helper("ftp"),
                       rule("raw", XT_CT), rule("raw", XT_CT, family="ip6"))
    assert sip_helper.scan(document) == (("inet fw4 sip1",), 2)

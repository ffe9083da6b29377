"""Pure judgement: does the kernel's SIP conntrack helper act on traffic in the router's
network namespace?

Why the agent asks: nf_conntrack_sip (with nf_nat_sip) rewrites SIP headers and SDP and
opens expectations for RTP. Behind a provider's SBC that breaks registrations and gives
one-way audio, and its NAT bindings outlive a failover. The Linux driver reports it in
`RouterState.sip_helper_on` and never removes it: it is the customer's configuration.

The helper acts on a connection when it is assigned to it, in one of two ways:

- explicitly, by the ruleset: an nftables `ct helper` object of type "sip" (which a rule
  assigns with `ct helper set`), or an iptables-nft rule `-j CT --helper sip`. nft shows
  the latter only as an opaque `xt target CT` whose helper it cannot name, so such a
  rule makes the answer "cannot tell";
- automatically: `net.netfilter.nf_conntrack_helper` = 1 (per namespace; off by default
  since Linux 4.7, the sysctl removed in 6.0 by b118509076b3 "netfilter: remove
  nf_conntrack_helper sysctl and modparam toggles") while nf_conntrack_sip is loaded or
  built in, which attaches the helper to every connection to its ports (5060).

An object is counted even if no rule assigns it yet: it is only ever declared to be
used, and following `ct helper set` through maps, verdict maps and jumps from JSON would
trade a rare false alarm for missed helpers. No I/O, no logging.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Per namespace; absent when conntrack is not loaded there, or on Linux 6.0+.
AUTO_ASSIGN_PATH = "/proc/sys/net/netfilter/nf_conntrack_helper"
#: Present while the module is loaded, and when it is built in (it has parameters).
SIP_MODULE = "nf_conntrack_sip"


def sip_helper_on(
    ruleset: Mapping[str, Any] | None, auto_assign: str | None, sip_module_loaded: bool
) -> bool | None:
    """True when the SIP helper acts on traffic, False when it does not, None when the
    read-back cannot tell.

    `ruleset`: the parsed `nft -j list ruleset` of the namespace (None: it could not be
    read). `auto_assign`: the text of AUTO_ASSIGN_PATH there (None: absent, so no
    automatic assignment). `sip_module_loaded`: /sys/module/nf_conntrack_sip exists.
    """
    objects, opaque = scan(ruleset) if ruleset is not None else ((), 0)
    if objects:
        return True
    auto = auto_assign_on(auto_assign)
    if auto and sip_module_loaded:
        return True
    if ruleset is None or opaque or (auto is None and sip_module_loaded):
        return None
    return False


def auto_assign_on(text: str | None) -> bool | None:
    """nf_conntrack_helper as a boolean: absent is off (the kernel has no such feature
    any more, or conntrack is not loaded in the namespace); unreadable is None."""
    if text is None:
        return False
    value = text.strip()
    if value in ("0", "1"):
        return value == "1"
    return None


def scan(ruleset: Mapping[str, Any]) -> tuple[tuple[str, ...], int]:
    """(the SIP helper objects as "family table name", the number of iptables-nft CT
    targets whose helper nft cannot show). Unknown objects are ignored, not fatal."""
    objects: list[str] = []
    opaque = 0
    for item in _items(ruleset):
        helper = item.get("ct helper")
        if isinstance(helper, Mapping) and str(helper.get("type", "")).lower() == "sip":
            objects.append(f"{helper.get('family')} {helper.get('table')} {helper.get('name')}")
        rule = item.get("rule")
        if isinstance(rule, Mapping) and _has_opaque_ct_target(rule):
            opaque += 1
    return tuple(objects), opaque


def _items(ruleset: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    items = ruleset.get("nftables", [])
    return [i for i in items if isinstance(i, Mapping)] if isinstance(items, list) else []


def _has_opaque_ct_target(rule: Mapping[str, Any]) -> bool:
    """iptables-nft keeps `-j CT --helper NAME` as an xtables target: nft 1.0 prints it
    as {"xt": {"type": "target", "name": "CT"}} (the helper name is in a blob it does not
    decode). Older nft prints {"xt": null}; the CT target exists only in the raw table, so
    a nameless xt target ending a rule there counts too. `--notrack` is translated to a
    native `notrack` and is not counted."""
    expressions = rule.get("expr")
    if not isinstance(expressions, list) or not expressions:
        return False
    for n, expression in enumerate(expressions):
        if not isinstance(expression, Mapping) or "xt" not in expression:
            continue
        xt = expression["xt"]
        if isinstance(xt, Mapping):
            if xt.get("type") == "target" and str(xt.get("name", "")).upper() == "CT":
                return True
        elif xt is None and n == len(expressions) - 1 and rule.get("table") == "raw":
            return True
    return False

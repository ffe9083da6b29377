"""`Lab.status()`: what is alive in a lab, read from the namespaces themselves."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hil.lab import plan, procs
from hil.lab import topology as t

if TYPE_CHECKING:
    from hil.lab.lab import Lab


def lab_status(lab: Lab) -> dict[str, Any]:
    """What is alive: namespaces, daemons, the CPE's link carriers, impairments."""
    existing = set(lab.namespaces())
    info: dict[str, Any] = {
        "prefix": lab.prefix,
        "lab_dir": str(lab.lab_dir),
        "config": str(lab.config_path) if lab.config_path.exists() else None,
        "namespaces": {lab.ns(n): lab.ns(n) in existing for n in t.NODES},
        "processes": {
            r.name: {"pid": r.pid, "alive": procs.is_alive(r)}
            for r in procs.read_pidfiles(lab.pid_dir)
        },
    }
    if lab.ns(t.CPE) in existing:
        info["carrier"] = {
            ifname: lab.carrier(t.CPE, ifname) for ifname in (t.PRIMARY_IF, t.CELLULAR_IF)
        }
    impairments: dict[str, list[str]] = {}
    for link, (node, cpe_side, up_side) in t.LINK_SIDES.items():
        if lab.ns(node) not in existing:
            continue
        found = []
        tables = lab.exec(node, ["nft", "list", "tables"]).stdout
        found += [kind for kind, table in (("blackhole", plan.BLACKHOLE_TABLE),
                                            ("loss", plan.LOSS_TABLE)) if table in tables]
        if not lab.carrier(node, cpe_side):
            found.append("down")
        for ifname in (cpe_side, up_side):
            qdisc = lab.exec(node, ["tc", "qdisc", "show", "dev", ifname, "root"]).stdout
            found += [f"{kind} on {ifname}" for kind in ("tbf", "netem") if kind in qdisc]
        impairments[link] = found
    if lab.ns(t.INET) in existing:
        listing = lab.exec(
            t.INET, ["nft", "-j", "list", "set", "ip", plan.TARGET_TABLE, plan.TARGET_SET]
        ).stdout
        impairments["dead_targets"] = _set_elements(listing)
    info["impairments"] = impairments
    return info


def _set_elements(nft_json: str) -> list[str]:
    try:
        data = json.loads(nft_json)
    except json.JSONDecodeError:
        return []
    for item in data.get("nftables", []):
        if "set" in item:
            return [str(e) for e in item["set"].get("elem", [])]
    return []

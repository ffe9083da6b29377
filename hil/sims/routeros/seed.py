"""The configuration a router boots with: a defconf-like setup for the chosen model.

LAN on a bridge (192.168.88.1/24, as defconf), WAN on ether1, the Ethernet LTE modem's
port (if any) on 192.168.5.0/24, the defconf firewall with its fasttrack rule (which
makes RouterOS show the dynamic "special dummy rule to show fasttrack counters" at the
top of the filter list), the builtin service ports and user groups.
"""

from __future__ import annotations

import ipaddress

from .db import ConfigDB
from .profiles import Model, Profile

LAN_ADDRESS = "192.168.88.1/24"
WAN_ADDRESS = "198.51.100.2/24"
WAN_GATEWAY = "198.51.100.1"
MODEM_ADDRESS = "192.168.5.2/24"
LTE_ADDRESS = "10.64.12.34/32"
DUMMY_COMMENT = "special dummy rule to show fasttrack counters"

_READ_POLICIES = {"local", "telnet", "ssh", "reboot", "read", "test", "winbox", "password",
                  "web", "sniff", "sensitive", "api", "romon", "rest-api", "tikapp"}


def policy_string(profile: Profile, enabled: set[str]) -> str:
    on = [p for p in profile.policies if p in enabled]
    off = [f"!{p}" for p in profile.policies if p not in enabled]
    return ",".join(on + off)


def group_policies(profile: Profile) -> dict[str, str]:
    full = set(profile.policies)
    read = _READ_POLICIES & full
    write = read | {"write"}
    return {
        "read": policy_string(profile, read),
        "write": policy_string(profile, write),
        "full": policy_string(profile, full),
    }


def seed(db: ConfigDB, profile: Profile, model: Model, user: str, password: str,
         group: str) -> None:
    v7 = profile.v7
    when = profile.format_datetime(profile.build_time)
    db.insert("/system/identity", {"name": "MikroTik"})
    db.insert("/system/resource", {
        "uptime": "0s", "version": profile.version, "build-time": when,
        "factory-software": "6.45.9" if not v7 else "7.1",
        "free-memory": str(model.total_memory * 6 // 10),
        "total-memory": str(model.total_memory), "cpu": model.cpu,
        "cpu-count": str(model.cpu_count), "cpu-frequency": "716", "cpu-load": "3",
        "free-hdd-space": str(80 * 1024 * 1024), "total-hdd-space": str(128 * 1024 * 1024),
        "architecture-name": model.architecture, "board-name": model.board_name,
        "platform": "MikroTik",
    })
    db.insert("/system/routerboard", {
        "routerboard": "true", "board-name": model.board_name, "model": model.model,
        "serial-number": "HD9080A1B2C", "firmware-type": model.architecture,
        "factory-firmware": "6.45.9" if not v7 else "7.1",
        "current-firmware": profile.firmware, "upgrade-firmware": profile.firmware,
    })

    ports = [*model.ethernet, "bridge"] + (["lte1"] if model.has_lte else [])
    for n, name in enumerate(ports, start=1):
        kind = "bridge" if name == "bridge" else "lte" if name == "lte1" else "ether"
        running = name in ("ether1", "ether2", "bridge", "lte1", model.modem_port)
        props = {
            "name": name, "type": kind, "mtu": "1500", "actual-mtu": "1500",
            "mac-address": f"48:8F:5A:00:00:{n:02X}", "link-downs": "0",
            "running": "true" if running else "false",
        }
        if kind != "lte":
            props["l2mtu"] = "1598"
        if kind == "ether":
            props["default-name"] = name
        if running:
            props["last-link-up-time"] = when
        for counter in ("rx-byte", "tx-byte", "rx-packet", "tx-packet", "rx-drop", "tx-drop",
                        "tx-queue-drop", "rx-error", "tx-error"):
            props[counter] = "0"
        db.insert("/interface", props, permanent=True)

    if v7:
        db.insert("/routing/table", {"name": "main", "fib": "true", "dynamic": "true"},
                  fixed=True, permanent=True)
    addresses = [(LAN_ADDRESS, "bridge"), (WAN_ADDRESS, "ether1")]
    if model.modem_port:
        addresses.append((MODEM_ADDRESS, model.modem_port))
    for address, iface in addresses:
        _address(db, profile, address, iface, dynamic=False)
    if model.has_lte:
        _address(db, profile, LTE_ADDRESS, "lte1", dynamic=True)
    db.insert("/ip/route", {
        "dst-address": "0.0.0.0/0", "gateway": WAN_GATEWAY, "distance": "1",
        "static": "true", "active": "true",
        **({"immediate-gw": f"{WAN_GATEWAY}%ether1"} if v7 else
           {"gateway-status": f"{WAN_GATEWAY} reachable via  ether1"}),
    })

    db.insert("/ip/firewall/filter", {"chain": "forward", "action": "passthrough",
                                      "comment": DUMMY_COMMENT, "dynamic": "true"},
              fixed=True, permanent=True)
    rules = [
        ("input", "accept", {"connection-state": "established,related,untracked"},
         "defconf: accept established,related,untracked"),
        ("input", "drop", {"connection-state": "invalid"}, "defconf: drop invalid"),
        ("input", "accept", {"protocol": "icmp"}, "defconf: accept ICMP"),
        ("input", "drop", {"in-interface": "ether1"}, "defconf: drop all not coming from LAN"),
        ("forward", "fasttrack-connection", {"connection-state": "established,related",
                                             **({"hw-offload": "true"} if v7 else {})},
         "defconf: fasttrack"),
        ("forward", "accept", {"connection-state": "established,related,untracked"},
         "defconf: accept established,related, untracked"),
        ("forward", "drop", {"connection-state": "invalid"}, "defconf: drop invalid"),
        ("forward", "drop", {"connection-state": "new", "connection-nat-state": "!dstnat",
                             "in-interface": "ether1"},
         "defconf: drop all from WAN not DSTNATed"),
    ]
    for chain, action, match, comment in rules:
        db.insert("/ip/firewall/filter",
                  {"chain": chain, "action": action, **match, "comment": comment})
    db.insert("/ip/firewall/nat", {"chain": "srcnat", "action": "masquerade",
                                   "out-interface": "ether1", "comment": "defconf: masquerade"})

    service_ports = [("ftp", "21", {}), ("tftp", "69", {}), ("irc", "6667", {}),
                     ("h323", "", {}), ("sip", "5060,5061",
                                        {"sip-direct-media": "true", "sip-timeout": "1h"}),
                     ("pptp", "", {}), ("udplite", "", {}), ("dccp", "", {}), ("sctp", "", {})]
    if v7:
        service_ports.append(("rtsp", "554", {"disabled": "true"}))
    for name, port_list, extra in service_ports:
        props = {"name": name, **extra}
        if port_list:
            props["ports"] = port_list
        db.insert("/ip/firewall/service-port", props, permanent=True)

    for name, policy in group_policies(profile).items():
        db.insert("/user/group", {"name": name, "policy": policy}, fixed=True, permanent=True)
    db.insert("/user", {"name": user, "group": group, "password": password})


def _address(db: ConfigDB, profile: Profile, address: str, iface: str, dynamic: bool) -> None:
    net = ipaddress.ip_interface(address).network
    props = {"address": address, "network": str(net.network_address), "interface": iface,
             "actual-interface": iface}
    if not profile.v7:
        props["broadcast"] = str(net.broadcast_address)
    if dynamic:
        props["dynamic"] = "true"
    db.insert("/ip/address", props, fixed=dynamic, permanent=dynamic)
    local = address.split("/")[0]
    route = {"dst-address": str(net), "gateway": iface, "distance": "0", "scope": "10",
             "connect": "true", "active": "true", "dynamic": "true"}
    if profile.v7:
        route.update({"immediate-gw": iface, "local-address": f"{local}%{iface}"})
    else:
        route.update({"pref-src": local, "gateway-status": f"{iface} reachable"})
    db.insert("/ip/route", route, fixed=True, permanent=True)

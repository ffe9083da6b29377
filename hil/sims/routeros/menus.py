"""The menu tree: which menus exist on a profile, their properties and their commands.

A menu is data: properties (with a kind, a default, read-only / required / write-only
flags, and an optional reference to another menu's names) plus the commands it
accepts. The database (db.py) is generic over these specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .profiles import Profile

READ = frozenset({"print", "getall"})
LIST_RW = READ | {"add", "set", "remove", "enable", "disable", "listen"}
ORDERED_RW = LIST_RW | {"move", "reset-counters", "reset-counters-all"}


@dataclass(frozen=True)
class Prop:
    name: str
    kind: str = "str"  # "str" | "bool" | "int"
    default: str | None = None  # printed when the item has no value of its own
    read_only: bool = False
    required: bool = False
    hidden: bool = False  # write-only (passwords): never printed
    ref: str | None = None  # values must name an item of that menu ("name" property)


@dataclass(frozen=True)
class MenuSpec:
    path: str
    props: dict[str, Prop]
    commands: frozenset[str]
    singleton: bool = False  # one item, no .id (system/resource, system/identity)
    ordered: bool = False  # rule lists: place-before, move
    unique_name: bool = False  # "failure: item with such name already exists"
    key: str | None = None  # property that may stand for .id in =numbers= / =.id=
    write_policy: str = "write"

    def writable(self, name: str) -> bool:
        prop = self.props.get(name)
        return prop is not None and not prop.read_only


def _props(*items: Prop) -> dict[str, Prop]:
    return {p.name: p for p in items}


def P(name: str, kind: str = "str", default: str | None = None, **kw: object) -> Prop:
    return Prop(name, kind, default, **kw)  # type: ignore[arg-type]


def RO(name: str, kind: str = "str", default: str | None = None) -> Prop:
    return Prop(name, kind, default, read_only=True)


COMMON_TAIL = (P("comment"), P("disabled", "bool", "false"), RO("dynamic", "bool", "false"))

_RULE_MATCHERS = (
    P("chain", required=True), P("src-address"), P("dst-address"), P("src-address-list"),
    P("dst-address-list"), P("protocol"), P("src-port"), P("dst-port"), P("port"),
    P("in-interface", ref="/interface"), P("out-interface", ref="/interface"),
    P("in-interface-list"), P("out-interface-list"), P("connection-state"),
    P("connection-nat-state"), P("connection-mark"), P("connection-type"), P("packet-mark"),
    P("layer7-protocol"), P("dscp"), P("place-before"),
)
_RULE_TAIL = (
    P("log", "bool", "false"), P("log-prefix", default=""), RO("bytes", "int", "0"),
    RO("packets", "int", "0"), RO("invalid", "bool", "false"), *COMMON_TAIL,
)


def _rules(path: str, *extra: Prop, action_default: str = "accept") -> MenuSpec:
    props = _props(*_RULE_MATCHERS, P("action", default=action_default), *extra, *_RULE_TAIL)
    return MenuSpec(path, props, ORDERED_RW, ordered=True)


def build_menus(profile: Profile) -> dict[str, MenuSpec]:
    v7 = profile.v7
    menus: list[MenuSpec] = []

    menus.append(MenuSpec("/system/resource", _props(
        RO("uptime"), RO("version"), RO("build-time"), RO("factory-software"),
        RO("free-memory", "int"), RO("total-memory", "int"), RO("cpu"), RO("cpu-count", "int"),
        RO("cpu-frequency", "int"), RO("cpu-load", "int"), RO("free-hdd-space", "int"),
        RO("total-hdd-space", "int"), RO("architecture-name"), RO("board-name"), RO("platform"),
    ), READ, singleton=True))
    menus.append(MenuSpec("/system/routerboard", _props(
        RO("routerboard", "bool"), RO("board-name"), RO("model"), RO("serial-number"),
        RO("firmware-type"), RO("factory-firmware"), RO("current-firmware"),
        RO("upgrade-firmware"),
    ), READ, singleton=True))
    menus.append(MenuSpec("/system/identity", _props(P("name")), READ | {"set"}, singleton=True))

    menus.append(MenuSpec("/interface", _props(
        P("name"), RO("default-name"), RO("type"), P("mtu", "int"), RO("actual-mtu", "int"),
        RO("l2mtu", "int"), RO("mac-address"), RO("last-link-up-time"), RO("link-downs", "int"),
        RO("rx-byte", "int"), RO("tx-byte", "int"), RO("rx-packet", "int"),
        RO("tx-packet", "int"), RO("rx-drop", "int"), RO("tx-drop", "int"),
        RO("tx-queue-drop", "int"), RO("rx-error", "int"), RO("tx-error", "int"),
        RO("running", "bool"), RO("slave", "bool"), P("comment"), P("disabled", "bool", "false"),
    ), READ | {"set", "enable", "disable", "listen", "reset-counters", "monitor-traffic"},
        key="name"))

    addr = [P("address", required=True), P("network")]
    if not v7:
        addr.append(P("broadcast"))
    menus.append(MenuSpec("/ip/address", _props(
        *addr, P("interface", required=True, ref="/interface"), RO("actual-interface"),
        RO("invalid", "bool", "false"), *COMMON_TAIL,
    ), LIST_RW))

    if v7:
        route = _props(
            P("dst-address", default="0.0.0.0/0"), P("gateway"), RO("immediate-gw"),
            P("check-gateway"), P("distance", "int", "1"), P("scope", "int", "30"),
            P("target-scope", "int", "10"), P("pref-src"),
            P("routing-table", default="main", ref="/routing/table"), P("vrf-interface"),
            P("suppress-hw-offload", "bool", "false"), RO("active", "bool", "false"),
            RO("static", "bool", "false"), RO("connect", "bool"), RO("inactive", "bool"),
            RO("local-address"), *COMMON_TAIL,
        )
        menus.append(MenuSpec("/routing/table", _props(
            P("name", required=True), P("fib", "bool"), RO("invalid", "bool", "false"),
            *COMMON_TAIL,
        ), LIST_RW, unique_name=True, key="name"))
    else:
        route = _props(
            P("dst-address", default="0.0.0.0/0"), P("gateway"), RO("gateway-status"),
            P("check-gateway"), P("distance", "int", "1"), P("scope", "int", "30"),
            P("target-scope", "int", "10"), P("pref-src"), P("routing-mark"),
            P("type", default="unicast"), RO("active", "bool", "false"),
            RO("static", "bool", "false"), RO("connect", "bool"), *COMMON_TAIL,
        )
    menus.append(MenuSpec("/ip/route", route, LIST_RW))

    menus.append(_rules("/ip/firewall/filter", P("reject-with"), P("jump-target"),
                        P("hw-offload", "bool")))
    menus.append(_rules("/ip/firewall/nat", P("to-addresses"), P("to-ports"), P("jump-target")))
    menus.append(_rules(
        "/ip/firewall/mangle", P("new-connection-mark"), P("new-packet-mark"),
        P("new-routing-mark", ref="/routing/table" if v7 else None), P("passthrough", "bool"),
        P("routing-mark"), P("jump-target"),
        P("new-dscp"), P("new-priority"),
    ))
    menus.append(MenuSpec("/ip/firewall/address-list", _props(
        P("list", required=True), P("address", required=True), P("timeout"),
        RO("creation-time"), *COMMON_TAIL,
    ), LIST_RW))
    menus.append(MenuSpec("/ip/firewall/connection", _props(
        RO("protocol"), RO("src-address"), RO("dst-address"), RO("reply-src-address"),
        RO("reply-dst-address"), RO("tcp-state"), RO("timeout"), RO("orig-packets", "int"),
        RO("orig-bytes", "int"), RO("repl-packets", "int"), RO("repl-bytes", "int"),
        RO("orig-rate", "int"), RO("repl-rate", "int"), RO("assured", "bool"),
        RO("seen-reply", "bool"), RO("confirmed", "bool"), RO("dying", "bool"),
        RO("fasttrack", "bool"), RO("srcnat", "bool"), RO("dstnat", "bool"),
        RO("expected", "bool"), RO("connection-mark"), RO("connection-type"),
    ), READ | {"remove"}))
    menus.append(MenuSpec("/ip/firewall/service-port", _props(
        RO("name"), P("ports"), P("sip-direct-media", "bool"), P("sip-timeout"),
        RO("invalid", "bool", "false"), P("disabled", "bool", "false"),
    ), READ | {"set", "enable", "disable"}, key="name"))

    user = [P("name", required=True), P("group", required=True, ref="/user/group"),
            P("address", default=""), P("password", hidden=True)]
    if v7:
        user.append(RO("last-logged-in"))
    menus.append(MenuSpec("/user", _props(*user, P("comment"), P("disabled", "bool", "false")),
                          LIST_RW, unique_name=True, key="name", write_policy="policy"))
    menus.append(MenuSpec("/user/group", _props(
        P("name", required=True), P("policy", default=""), P("skin", default="default"),
        P("comment"),
    ), READ | {"add", "set", "remove"}, unique_name=True, key="name", write_policy="policy"))
    active = [RO("name"), RO("when"), RO("address"), RO("via"), RO("radius", "bool")]
    if v7:
        active.append(RO("group"))
    menus.append(MenuSpec("/user/active", _props(*active), READ | {"listen"}))
    return {m.path: m for m in menus}


@dataclass(frozen=True)
class Tree:
    """Directories and commands, for resolving a command word like /ip/route/print."""

    menus: dict[str, MenuSpec]
    dir_commands: dict[str, frozenset[str]] = field(default_factory=dict)
    stub_dirs: frozenset[str] = frozenset()

    def is_dir(self, path: str) -> bool:
        if path == "" or path in self.stub_dirs or path in self.dir_commands:
            return True
        return any(m == path or m.startswith(path + "/") for m in self.menus)

    def commands(self, path: str) -> frozenset[str]:
        cmds = set(self.dir_commands.get(path, frozenset()))
        if path in self.menus:
            cmds |= self.menus[path].commands
        return frozenset(cmds)


def build_tree(profile: Profile) -> Tree:
    return Tree(
        menus=build_menus(profile),
        dir_commands={
            "": frozenset({"login", "quit", "cancel", "ping"}),
            "/system": frozenset({"reboot"}),
        },
        # /routing exists on 6.x too (bgp, ospf, filter ...), just without "table".
        stub_dirs=frozenset({"/routing", "/tool", "/interface/ethernet", "/interface/bridge"}),
    )

"""RouterOSDriver: VoIP-only cellular failover on a MikroTik, over the RouterOS API.

The agent runs beside the router (a LAN box or ATA) and drives it over api-ssl. What is
installed, and why it is shaped so, is in README.md beside this file; the items are
built by `commands`, compared by `reconcile`, the replies read by `parse`; `transport`
is the only module that speaks to librouteros.

Three API sessions, each with one command in flight: control (config, counters,
conntrack), probes (/ping, which takes seconds and must never delay a failover) and the
carrier watch (/interface/listen, a command that never ends).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from drivers import profiles
from drivers.errors import DeviceReplyError, NeedsHumanError, RetryableError
from drivers.types import (
    Counters,
    LinkEvent,
    LinkStatus,
    ProbeResult,
    RouterIdentity,
    RouterState,
    VoipPath,
    VoipPolicy,
)

from . import boot, checks, parse, reconcile, watch
from . import commands as c
from .transport import BACKOFF_MAX_S, BACKOFF_MIN_S, ApiTrap, Channel, Endpoint, endpoint

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
NO_SUCH_ITEM = "no such item"
NO_PERMISSION = "not enough permissions"
SIP_HELPER_DRIFT = (
    "the SIP helper (/ip firewall service-port sip) is enabled; it rewrites SIP and breaks "
    "calls after a failover"
)
NEEDS_POLICY = "The RouterOS driver has no policy yet; call apply_policy before this."


class _Again(Exception):
    """What was read went stale while applying (an item vanished, the session dropped)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class RouterOSDriver:
    """RouterDriver for a MikroTik on RouterOS 6.49 or 7.x (see README.md).

    Options: host, port (default 8729, or 8728 with plain_api), username, password,
    plain_api, tls_ca_file, tls_verify, timeout_s (per command), profiles_dir (the
    firmware-profiles directory), backoff_min_s/backoff_max_s (reconnect back-off).
    Options meant for other drivers are accepted and ignored.
    """

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: Any = None,
        plain_api: bool = False,
        tls_ca_file: str | Path | None = None,
        tls_verify: bool = True,
        timeout_s: float | None = None,
        profiles_dir: str | Path | None = None,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        **_other_drivers_options: Any,
    ) -> None:
        if password is not None and hasattr(password, "get_secret_value"):
            password = password.get_secret_value()
        self._options = dict(host=host, port=port, username=username, password=password,
                             plain_api=plain_api, tls_ca_file=tls_ca_file, tls_verify=tls_verify,
                             timeout_s=float(timeout_s) if timeout_s else DEFAULT_TIMEOUT_S)
        self._profiles_dir = Path(profiles_dir) if profiles_dir else None
        self._backoff = (backoff_min_s, backoff_max_s)
        self._ep: Endpoint | None = None
        self._control: Channel | None = None
        self._probes: Channel | None = None
        self._ops = asyncio.Lock()
        self.profile: profiles.RouterProfile | None = None
        self._dialect = c.V7
        self._identity: RouterIdentity | None = None
        self._identity_gen = -1
        self._policy: VoipPolicy | None = None
        self._desired: tuple[c.Desired, ...] = ()
        self._path_hint: VoipPath | None = None
        self._switch_id: str | None = None
        self._boot = boot.BootMarker(self._call, self._remove, self._notice)
        self._notices: list[str] = []
        self._reported: set[str] = set()

    # --- sessions -----------------------------------------------------------------------

    def _endpoint(self) -> Endpoint:
        if self._ep is None:
            o = self._options
            self._ep = endpoint(o["host"], o["port"], o["username"], o["password"],
                                plain_api=bool(o["plain_api"]), tls_ca_file=o["tls_ca_file"],
                                tls_verify=bool(o["tls_verify"]), timeout_s=o["timeout_s"])
        return self._ep

    @property
    def control(self) -> Channel:
        if self._control is None:
            self._control = Channel(self._endpoint(), "control", backoff_min_s=self._backoff[0],
                                    backoff_max_s=self._backoff[1])
        return self._control

    @property
    def round_trips(self) -> int:
        """API commands sent so far on all sessions (for the benchmark)."""
        return sum(ch.round_trips for ch in (self._control, self._probes) if ch is not None)

    async def _call(self, command: str, args: Mapping[str, str] | None = None, *,
                    queries: Sequence[str] = (), proplist: Sequence[str] | None = None
                    ) -> list[dict[str, str]]:
        try:
            return (await self.control.call(command, args, queries=queries,
                                            proplist=proplist)).rows
        except ApiTrap as trap:
            if trap.says(NO_PERMISSION):
                raise NeedsHumanError(
                    f"The router refused {command} for lack of permission; give the agent's "
                    "user a group with policy api,read,write,test, then restart the agent."
                ) from trap
            raise

    # --- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, identify the router and its profile, and check the session's rights."""
        await self.control.ensure()
        await self._refresh_identity()
        await checks.privileges(self._call, self._endpoint().username)
        await checks.api_service(self._call, self.profile, self._endpoint().host)

    async def close(self) -> None:
        for channel in (self._control, self._probes):
            if channel is not None:
                await channel.close()

    async def _refresh_identity(self) -> None:
        """After each (re)connect: who the router is, its profile, and whether it changed."""
        await self.control.ensure()
        if self._identity is not None and self._identity_gen == self.control.generation:
            return
        current, profile = await checks.identify(self._call, self._profiles_dir)
        if self._identity is not None:
            for sentence in parse.identity_changes(self._identity, current):
                self._notice(sentence)
        self._identity = current
        self._identity_gen = self.control.generation
        if self.profile is None:
            log.info("router %s: %s", self._endpoint().host, profile.describe())
            if profile.model is None:
                log.warning("router %s: no firmware profile for board %r; using the %s "
                            "line's defaults", self._endpoint().host, profile.board_name,
                            profile.os_line.line)
        dialect = c.Dialect(profile.os_line.routing)
        self.profile = profile
        if dialect != self._dialect:
            self._dialect = dialect
            if self._policy is not None:
                self._desired = c.build(self._policy, dialect)

    # --- policy -------------------------------------------------------------------------

    async def apply_policy(self, policy: VoipPolicy) -> None:
        c.validate(policy)
        async with self._ops:
            await self._refresh_identity()
            self._policy = policy
            self._desired = c.build(policy, self._dialect)
            await self._apply_locked()

    async def _apply_locked(self) -> None:
        for attempt in (1, 2):
            try:
                await self._apply_once()
                return
            except _Again as again:
                if attempt == 2:
                    raise again.error from again
                log.info("router changed under the apply (%s); reading it again", again)

    async def _apply_once(self) -> None:
        policy = self._policy
        assert policy is not None
        await self._check_interfaces(policy)
        actual = await self._read_config()
        plan = reconcile.plan(self._desired, actual, dialect=self._dialect,
                              switch_on=self._path_hint is VoipPath.CELLULAR)
        for sentence in plan.foreign:
            self._notice(sentence[0].upper() + sentence[1:] + ".")
        for op in plan.ops:
            await self._execute(op)
        await self._disable_sip_helper()
        if plan.ops:
            log.info("router %s: applied %d change(s): %s", self._endpoint().host,
                     len(plan.ops), "; ".join(plan.drift))
            # Read back: the router must now hold exactly what was asked for.
            actual = await self._read_config()
            check = reconcile.plan(self._desired, actual, dialect=self._dialect,
                                   switch_on=self._path_hint is VoipPath.CELLULAR)
            if check.ops:
                raise DeviceReplyError(
                    f"The router did not keep the agent's configuration ({check.drift[0]}); "
                    "the agent retries.", raw="; ".join(check.drift))
        self._switch_id = reconcile.installed(actual).switch_id

    async def _execute(self, op: reconcile.Op) -> None:
        try:
            await self._call(f"{op.menu}/{op.kind}", dict(op.args))
        except ApiTrap as trap:
            if trap.says(NO_SUCH_ITEM) or trap.says("builtin"):
                raise _Again(trap) from trap
            raise
        except RetryableError as exc:
            raise _Again(exc) from exc

    async def _check_interfaces(self, policy: VoipPolicy) -> None:
        rows = await self._call(f"{c.INTERFACE}/print", proplist=["name", "type"])
        present = {r.get("name") for r in rows}
        for name, setting in c.interfaces_named(policy).items():
            if name in present:
                continue
            if name == policy.cellular_interface:
                raise RetryableError(
                    f"The router has no interface {name} for the LTE link; check "
                    f"{setting}, or wait for the modem (the agent retries).")
            raise NeedsHumanError(
                f"The router has no interface {name}; fix {setting} in the config.")
        model = self.profile.model if self.profile else None
        if model is not None and policy.cellular_interface != model.lte_interface:
            log.warning("router %s: LTE on %s, while the %s usually has it on %s",
                        self._endpoint().host, policy.cellular_interface, model.name,
                        model.lte_interface)

    async def _read_config(self) -> dict[str, list[dict[str, str]]]:
        """The menus that hold the agent's items (and the customer's rules around them)."""
        d = self._dialect
        out: dict[str, list[dict[str, str]]] = {}
        out[c.ADDRESS_LIST] = await self._call(
            f"{c.ADDRESS_LIST}/print",
            queries=[f"?list={c.VOIP_LIST}", f"?list={c.AGENT_LIST}", "?#|"])
        if d.v7:
            out[c.ROUTING_TABLE] = await self._call(f"{c.ROUTING_TABLE}/print")
        out[c.ROUTE] = await self._call(
            f"{c.ROUTE}/print",
            queries=[f"?{d.routing}={c.TABLE}", f"?comment={c.TAG}route", "?#|"])
        for menu in (c.MANGLE, c.FILTER, c.NAT):
            out[menu] = await self._call(f"{menu}/print")
        return out

    async def _sip_helper(self) -> dict[str, str] | None:
        """The service-port row `sip`; None when this build has none."""
        rows = await self._call(f"{c.SERVICE_PORT}/print", queries=["?name=sip"],
                                proplist=[".id", "name", "disabled"])
        return rows[0] if rows else None

    async def _disable_sip_helper(self) -> None:
        """The SIP ALG rewrites SIP and keeps stale NAT bindings across a failover: off."""
        helper = await self._sip_helper()
        if helper is None or parse.to_bool(helper.get("disabled")) is True:
            return
        await self._execute(reconcile.Op("set", c.SERVICE_PORT,
                                         ((".id", helper[".id"]), ("disabled", "yes")), ""))
        self._reported.discard(_SIP_NOTICE)
        self._notice(_SIP_NOTICE)

    async def set_voip_path(self, path: VoipPath) -> None:
        """One `set` of the switch rule (one round trip), then one read-back."""
        async with self._ops:
            self._path_hint = path
            switch_id = self._switch_id or await self._find_switch()
            for attempt in (1, 2):
                if switch_id is None:
                    break
                try:
                    await self._call(f"{c.MANGLE}/set", {
                        ".id": switch_id,
                        "disabled": "no" if path is VoipPath.CELLULAR else "yes",
                    })
                    break
                except ApiTrap as trap:
                    if not trap.says(NO_SUCH_ITEM):
                        raise
                    # The id went stale (re-created by hand?): look it up once more.
                    switch_id = await self._find_switch() if attempt == 1 else None
            if switch_id is None:
                # The switch went (removed by hand, or never installed): rebuild, which adds
                # it in the wanted position.
                if self._policy is None:
                    raise NeedsHumanError(NEEDS_POLICY)
                await self._refresh_identity()
                await self._apply_locked()
                switch_id = self._switch_id
            rows = await self._switch_rows()
            on = [parse.to_bool(r.get("disabled")) is not True for r in rows
                  if r.get(".id") == switch_id]
            if on != [path is VoipPath.CELLULAR]:
                self._switch_id = None
                raise DeviceReplyError(
                    f"The router did not take the VoIP path {path.value}; the agent retries.",
                    raw=str(rows))
            self._switch_id = switch_id

    async def _switch_rows(self) -> list[dict[str, str]]:
        return await self._call(f"{c.MANGLE}/print",
                                queries=[f"?comment={c.TAG}{c.SWITCH_ROLE}"],
                                proplist=[".id", "disabled", "comment"])

    async def _find_switch(self) -> str | None:
        rows = await self._switch_rows()
        return rows[0][".id"] if rows else None

    async def read_state(self) -> RouterState:
        """The agent's items, the switch, drift and notices, read from the router; also
        the SIP helper (`sip_helper_on`, even before any apply: the installer checks it
        first) and the matched firmware profile (`profile`, `profile_matched`)."""
        async with self._ops:
            await self._refresh_identity()
            actual = await self._read_config()
            helper = await self._sip_helper()
            name = (await self._call("/system/identity/print"))[0].get("name")
        if self._identity is not None and name is not None and name != self._identity.name:
            for sentence in parse.identity_changes(
                    self._identity, RouterIdentity(self._identity.serial, self._identity.model,
                                                   name, self._identity.os_version)):
                self._notice(sentence)
            self._identity = RouterIdentity(self._identity.serial, self._identity.model, name,
                                            self._identity.os_version)
        found = reconcile.installed(actual)
        self._switch_id = found.switch_id
        # Reported whether or not a policy was applied: the installer checks it first.
        sip_helper_on = parse.sip_helper_on(helper)
        drift: tuple[str, ...] = ()
        if self._desired:
            plan = reconcile.plan(self._desired, actual, dialect=self._dialect, switch_on=False)
            drift = plan.drift
            for sentence in plan.foreign:
                self._notice(sentence[0].upper() + sentence[1:] + ".")
            if sip_helper_on:
                drift += (SIP_HELPER_DRIFT,)
        return RouterState(
            policy_installed=found.any_item,
            voip_path=found.path,
            drift=drift,
            blocked_packets=found.blocked_packets,
            blocked_bytes=found.blocked_bytes,
            identity=self._identity,
            notices=self._take_notices(),
            sip_helper_on=sip_helper_on,
            profile=self.profile.describe() if self.profile else None,
            profile_matched=(self.profile.model is not None) if self.profile else None,
        )

    async def remove_all(self) -> int:
        """Remove every item tagged as the agent's (found by the tag alone, so it works in
        a fresh process). The boot marker stays: it is state, not configuration, and it
        expires by itself (removing it would make the meter see a reboot that was not)."""
        async with self._ops:
            await self._refresh_identity()
            actual: dict[str, list[dict[str, str]]] = {}
            for menu in self._dialect.menus:
                actual[menu] = await self._call(f"{menu}/print", proplist=[".id", "comment"])
            removed = 0
            for menu, ids in reconcile.owned_ids(actual, self._dialect):
                removed += await self._remove(menu, ids)
            self._switch_id = None
            return removed

    async def _remove(self, menu: str, ids: Sequence[str]) -> int:
        """Remove items by id; ones gone meanwhile (`no such item`) are fine, not counted."""
        if not ids:
            return 0
        try:
            await self._call(f"{menu}/remove", {".id": ",".join(ids)})
            return len(ids)
        except ApiTrap as trap:
            if not trap.says(NO_SUCH_ITEM):
                raise
            if len(ids) == 1:
                return 0
        removed = 0
        for one in ids:  # RouterOS removed none of the batch: one by one
            try:
                await self._call(f"{menu}/remove", {".id": one})
                removed += 1
            except ApiTrap as trap:
                if not trap.says(NO_SUCH_ITEM):
                    raise
        return removed

    # --- conntrack ----------------------------------------------------------------------

    def _require_policy(self) -> VoipPolicy:
        if self._policy is None:
            raise NeedsHumanError(NEEDS_POLICY)
        return self._policy

    async def _connections(self, proplist: Sequence[str]) -> list[dict[str, str]]:
        return await self._call(f"{c.CONNECTION}/print",
                                queries=["?protocol=udp", "?protocol=tcp", "?#|"],
                                proplist=proplist)

    async def flush_voip_conntrack(self) -> int:
        """Remove SIP/RTP entries to the VoIP prefixes: one print, one batch remove."""
        policy = self._require_policy()
        nets = c.networks(policy.voip_prefixes, "voip_prefixes")
        rows = await self._connections([".id", "protocol", "dst-address"])
        ids = [r[".id"] for r in rows
               if parse.voip_flow_kind(policy, nets, r.get("protocol"), r.get("dst-address"))]
        return await self._remove(c.CONNECTION, ids)

    async def active_calls(self) -> int:
        policy = self._require_policy()
        nets = c.networks(policy.voip_prefixes, "voip_prefixes")
        rows = await self._connections([".id", "protocol", "src-address", "dst-address",
                                        "orig-rate", "repl-rate", "timeout", "assured"])
        return parse.active_calls(policy, nets, rows)

    # --- links --------------------------------------------------------------------------

    async def interface_counters(self, interface: str) -> Counters:
        """64-bit counters; `boot_id` is the router's serial and its boot marker's token."""
        rows = await self._call(f"{c.INTERFACE}/print", queries=[f"?name={interface}"],
                                proplist=["name", "type", "rx-byte", "tx-byte", "rx-packet",
                                          "tx-packet"])
        if not rows:
            raise RetryableError(
                f"The router has no interface {interface}, so it has no counters; the agent "
                "retries when it is back.")
        row = rows[0]
        await self._refresh_identity()
        token = await self._boot.token(lambda: self.control.generation)
        model = self.profile.model if self.profile else None
        frames = parse.counts_frames(row.get("type"))
        if model is not None and interface == model.lte_interface:
            frames = model.lte_counts_frames
        serial = (self._identity.serial if self._identity else None) or "unknown"
        return Counters(
            interface=interface,
            rx_bytes=parse.to_int(row.get("rx-byte")) or 0,
            tx_bytes=parse.to_int(row.get("tx-byte")) or 0,
            rx_packets=parse.to_int(row.get("rx-packet")) or 0,
            tx_packets=parse.to_int(row.get("tx-packet")) or 0,
            boot_id=f"routeros/{serial}/{token}",
            counts_frames=frames,
            width_bits=64,
        )

    async def link_status(self, interface: str) -> LinkStatus:
        """A missing interface (a modem unplugged) is carrier down."""
        rows = await self._call(f"{c.INTERFACE}/print", queries=[f"?name={interface}"],
                                proplist=["name", "running", "disabled"])
        if not rows:
            return LinkStatus(interface, False, ())
        addresses = await self._call(f"{c.IP_ADDRESS}/print", queries=[f"?interface={interface}"],
                                     proplist=["address", "disabled", "invalid"])
        usable = tuple(a["address"] for a in addresses if a.get("address")
                       and parse.to_bool(a.get("disabled")) is not True
                       and parse.to_bool(a.get("invalid")) is not True)
        return LinkStatus(interface, parse.carrier_up(rows[0]), usable)

    def watch_carrier(self) -> AsyncIterator[LinkEvent]:
        """Carrier changes from `/interface/listen`, on a session of its own (watch.py)."""
        return watch.carrier_events(self._endpoint(), self._backoff)

    # --- probes -------------------------------------------------------------------------

    async def ping(self, target: str, via: VoipPath, count: int = 3, *,
                   interval_s: float = 0.2, size: int | None = None) -> list[ProbeResult]:
        """ICMP echo run by the router itself (for an agent that is not on the router):
        by the cellular routing table for CELLULAR, by `main` for PRIMARY. One result per
        probe. On a session of its own, so a ping never delays a failover."""
        if self._probes is None:
            self._probes = Channel(self._endpoint(), "probes", backoff_min_s=self._backoff[0],
                                   backoff_max_s=self._backoff[1])
        args = {"address": target, "count": str(max(1, count)),
                "interval": parse.format_interval(interval_s),
                "routing-table": c.TABLE if via is VoipPath.CELLULAR else "main"}
        if size is not None:
            args["size"] = str(size)
        deadline = count * (interval_s + 1.0) + self._endpoint().timeout_s
        try:
            reply = await self._probes.call("/ping", args, deadline_s=deadline)
        except ApiTrap as trap:
            if trap.says(NO_PERMISSION):
                raise NeedsHumanError(
                    "The router refused /ping: the agent's user lacks the test policy; add it "
                    "to the group (policy api,read,write,test).") from trap
            raise
        return parse.ping_results(target, reply.rows, via.value)

    # --- notices ------------------------------------------------------------------------

    def _notice(self, sentence: str) -> None:
        if sentence in self._reported:
            return
        self._reported.add(sentence)
        self._notices.append(sentence)
        log.warning("router %s: %s", self._options["host"], sentence)

    def _take_notices(self) -> tuple[str, ...]:
        out = tuple(self._notices)
        self._notices.clear()
        return out


_SIP_NOTICE = ("The agent disabled the router's SIP helper (/ip firewall service-port sip): it "
               "rewrites SIP and keeps stale NAT bindings across a failover.")

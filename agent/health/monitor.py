"""The health shell: probes each link on its own schedule, scores it, publishes verdicts.

All judgement lives in `scoring` (pure); this module only keeps time, runs probes,
keeps a bounded window of samples and hands each fresh `LinkAssessment` to one
callback. It re-assesses:

* at every ICMP round (before its answers are in: the in-flight probes are evidence
  too, which is how a blackhole is seen before the probes' own timeouts),
* when a round's probes have all finished (ICMP or SIP),
* at once on a carrier change (`set_carrier`: the netlink fast path).

The cellular link is probed sparsely while idle, because every probe costs LTE plan
bytes, and closely when it may carry VoIP: `set_interval` changes a link's cadence at
run time and takes effect immediately. SIP OPTIONS (about 1 KB a transaction) are sent
every `max(sip_interval_s, interval_s)`, so slowing a link's pings slows its SIP too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from agent.health.scoring import HealthPolicy, InFlight, LinkAssessment, Sample, assess_link
from drivers.types import ProbeResult

log = logging.getLogger(__name__)


class ClockLike(Protocol):
    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class IcmpProbing(Protocol):
    async def probe(self, target: str, timeout_s: float | None = None) -> ProbeResult: ...


class SipProbing(Protocol):
    async def probe(
        self, host: str, port: int = 5060, timeout_s: float | None = None
    ) -> ProbeResult: ...


@dataclass
class LinkSpec:
    """What to probe on one link, with what, and how often."""

    icmp_prober: IcmpProbing
    icmp_targets: tuple[str, ...]
    policy: HealthPolicy = field(default_factory=HealthPolicy)
    interval_s: float = 0.25
    probe_timeout_s: float = 1.0
    sip_prober: SipProbing | None = None
    #: (host, port) of each SBC.
    sip_targets: tuple[tuple[str, int], ...] = ()
    sip_interval_s: float = 5.0
    sip_timeout_s: float = 4.0
    #: Hard cap on the samples kept, whatever the retention horizon.
    max_samples: int = 4096


class _Link:
    """One link's run-time state."""

    def __init__(self, role: str, spec: LinkSpec) -> None:
        self.role = role
        self.spec = spec
        self.interval_s = spec.interval_s
        self.sip_interval_s = spec.sip_interval_s
        self.carrier_up: bool | None = None
        self.samples: deque[Sample] = deque(maxlen=spec.max_samples)
        self.in_flight: dict[int, InFlight] = {}
        self.latest: LinkAssessment | None = None
        self.last_round_s = float("-inf")
        self.last_sip_round_s = float("-inf")
        self.wake_icmp = asyncio.Event()
        self.wake_sip = asyncio.Event()

    @property
    def effective_sip_interval_s(self) -> float:
        return max(self.sip_interval_s, self.interval_s)

    def retention_s(self) -> float:
        """Keep enough to see each target's last answer through a full down rule."""
        p = self.spec.policy
        slowest = max(self.interval_s, self.effective_sip_interval_s)
        timeouts = max(self.spec.probe_timeout_s, self.spec.sip_timeout_s)
        return max(p.window_s, p.down_after_s + (p.down_after_probes + 1) * slowest + timeouts)


def _check_interval(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


class Monitor:
    """Probes every link until cancelled; calls `on_assessment(role, assessment)`."""

    def __init__(
        self,
        clock: ClockLike,
        links: Mapping[str, LinkSpec],
        on_assessment: Callable[[str, LinkAssessment], None],
    ) -> None:
        self._clock = clock
        self._links = {role: _Link(role, spec) for role, spec in links.items()}
        self._on_assessment = on_assessment
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        for link in self._links.values():
            _check_interval("interval_s", link.interval_s)
            _check_interval("sip_interval_s", link.sip_interval_s)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self._links)

    def _link(self, role: str) -> _Link:
        try:
            return self._links[role]
        except KeyError:
            raise ValueError(
                f"no link with role {role!r}; known: {', '.join(self._links)}"
            ) from None

    # -- control -------------------------------------------------------------------

    def set_carrier(self, role: str, up: bool | None) -> LinkAssessment:
        """A carrier change from outside (netlink, RouterOS): re-assess at once."""
        link = self._link(role)
        link.carrier_up = up
        return self.assess(role)

    def set_interval(
        self, role: str, interval_s: float, *, sip_interval_s: float | None = None
    ) -> None:
        """Change how often a link is probed; a sleeping schedule wakes to the new one."""
        _check_interval("interval_s", interval_s)
        link = self._link(role)
        link.interval_s = interval_s
        if sip_interval_s is not None:
            _check_interval("sip_interval_s", sip_interval_s)
            link.sip_interval_s = sip_interval_s
        link.wake_icmp.set()
        link.wake_sip.set()

    def set_policy(self, role: str, policy: HealthPolicy) -> LinkAssessment:
        """New thresholds for a link (the fleet's `set thresholds`); re-assess at once."""
        link = self._link(role)
        link.spec = replace(link.spec, policy=policy)
        return self.assess(role)

    def policy(self, role: str) -> HealthPolicy:
        return self._link(role).spec.policy

    def spec(self, role: str) -> LinkSpec:
        """The link's probes and targets (the installer test borrows its SIP prober)."""
        return self._link(role).spec

    def interval_s(self, role: str) -> float:
        return self._link(role).interval_s

    def latest(self, role: str) -> LinkAssessment | None:
        return self._link(role).latest

    def samples(self, role: str) -> tuple[Sample, ...]:
        return tuple(self._link(role).samples)

    def assess(self, role: str) -> LinkAssessment:
        """Score the link now from what it holds, publish and return the assessment."""
        link = self._link(role)
        now = self._clock.monotonic()
        horizon = now - link.retention_s()
        while link.samples and link.samples[0][0] < horizon:
            link.samples.popleft()
        assessment = assess_link(
            link.samples, now, link.spec.policy, link.carrier_up, list(link.in_flight.values())
        )
        link.latest = assessment
        try:
            self._on_assessment(role, assessment)
        except Exception:
            log.exception("the assessment callback failed for %s", role)
        return assessment

    # -- the schedule --------------------------------------------------------------

    async def run(self) -> None:
        """Probe every link until cancelled; closes the probers when it ends."""
        loops: list[asyncio.Task[None]] = []
        for link in self._links.values():
            loops.append(asyncio.create_task(self._icmp_loop(link), name=f"icmp-{link.role}"))
            if link.spec.sip_prober is not None and link.spec.sip_targets:
                loops.append(asyncio.create_task(self._sip_loop(link), name=f"sip-{link.role}"))
        try:
            await asyncio.gather(*loops)
        finally:
            pending = [*loops, *self._tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for link in self._links.values():
                for prober in (link.spec.icmp_prober, link.spec.sip_prober):
                    close = getattr(prober, "close", None)
                    if callable(close):
                        close()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sleep_until(self, deadline: Callable[[], float], wake: asyncio.Event) -> None:
        """Sleep on the injected clock until deadline(); re-read it whenever woken."""
        while (remaining := deadline() - self._clock.monotonic()) > 0:
            wake.clear()
            sleeper = asyncio.ensure_future(self._clock.sleep(remaining))
            waker = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    async def _icmp_loop(self, link: _Link) -> None:
        while True:
            link.last_round_s = now = self._clock.monotonic()
            if link.spec.icmp_targets:
                probes = [self._icmp_one(link, target, now) for target in link.spec.icmp_targets]
                self._spawn(self._round(link.role, probes), f"icmp-round-{link.role}")
            self.assess(link.role)
            await self._sleep_until(lambda: link.last_round_s + link.interval_s, link.wake_icmp)

    async def _sip_loop(self, link: _Link) -> None:
        assert link.spec.sip_prober is not None
        while True:
            link.last_sip_round_s = now = self._clock.monotonic()
            probes = [self._sip_one(link, host, port, now) for host, port in link.spec.sip_targets]
            self._spawn(self._round(link.role, probes), f"sip-round-{link.role}")
            await self._sleep_until(
                lambda: link.last_sip_round_s + link.effective_sip_interval_s, link.wake_sip
            )

    async def _round(self, role: str, probes: Sequence[Awaitable[None]]) -> None:
        await asyncio.gather(*probes)
        self.assess(role)

    async def _icmp_one(self, link: _Link, target: str, sent_at_s: float) -> None:
        key = next(self._ids)
        link.in_flight[key] = (sent_at_s, target)
        try:
            result = await link.spec.icmp_prober.probe(target, link.spec.probe_timeout_s)
        except Exception as exc:
            log.exception("ICMP probe to %s on %s failed", target, link.role)
            result = ProbeResult(target, "icmp", False, detail=f"probe error: {exc}")
        finally:
            link.in_flight.pop(key, None)
        link.samples.append((sent_at_s, result))

    async def _sip_one(self, link: _Link, host: str, port: int, sent_at_s: float) -> None:
        assert link.spec.sip_prober is not None
        try:
            result = await link.spec.sip_prober.probe(host, port, link.spec.sip_timeout_s)
        except Exception as exc:
            log.exception("SIP probe to %s:%s on %s failed", host, port, link.role)
            result = ProbeResult(f"{host}:{port}", "sip", False, detail=f"probe error: {exc}")
        link.samples.append((sent_at_s, result))

"""The meter's settings, taken from the agent's configuration ([plan], [meter], the
cellular link, the router driver and the codec) into one frozen value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.meter import budget
from agent.meter.books import MeterRules
from agent.meter.counter import ETHERNET_HEADER_BYTES

if TYPE_CHECKING:  # the kill -9 harness builds settings without pydantic
    from agent.config import Settings

BINARY_GB_BYTES = 1 << 30


@dataclass(frozen=True)
class MeterSettings:
    #: The cellular interface whose counters are the meter's source.
    interface: str
    rules: MeterRules
    #: The router driver's name: part of the counters' source (a change is a new baseline).
    driver: str = "linux"
    poll_interval_s: float = 5.0
    #: Batch writes: at most one per this interval, plus one on every event.
    persist_interval_s: float = 60.0
    #: Header bytes per packet removed when the counters count frames.
    frame_overhead_bytes: int = ETHERNET_HEADER_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> MeterSettings:
        plan, meter = settings.plan, settings.meter
        gb_bytes = budget.DECIMAL_GB_BYTES if plan.gb_unit == "decimal" else BINARY_GB_BYTES
        rules = MeterRules(
            plan=budget.Plan(
                cap_bytes=round(plan.cap_gb * gb_bytes),
                gb_bytes=gb_bytes,
                overage_usd_per_gb=plan.overage_usd_per_gb,
                thresholds_pct=tuple(plan.thresholds_pct),
                safety_margin_pct=meter.safety_margin_pct,
                telemetry_minimum_at_pct=meter.telemetry_minimum_at_pct,
            ),
            start_day=plan.cycle_start_day,
            timezone=plan.timezone,
            limits=budget.PrimaryUseLimits(
                lte_primary_healthy_s=meter.warn_lte_primary_healthy_s,
                idle_bytes=meter.warn_idle_bytes,
                lte_share_pct=meter.warn_lte_share_pct,
            ),
            codec=settings.health.codec,
            ptime_ms=meter.ptime_ms,
            projection_window_s=meter.projection_window_days * 86400.0,
        )
        return cls(
            interface=settings.links.cellular.interface,
            rules=rules,
            driver=settings.router.driver,
            poll_interval_s=meter.poll_interval_s,
            persist_interval_s=meter.persist_interval_s,
            frame_overhead_bytes=meter.frame_overhead_bytes,
        )

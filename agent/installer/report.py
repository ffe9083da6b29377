"""The installer test's report: each step's outcome, the verdict, and the JSON shape.

Pure: no I/O, no clock. The runner (`agent.installer.runner`) makes `StepResult`s as
it goes; the CLI renders them (`agent.installer.render`); the same dictionary goes to
`--json`, to the stored report and to the provider's `test_finished` event, so a
person, a script and the fleet dashboard all see one truth.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Version of the report's JSON shape (docs/installer.md); bump on incompatible change.
REPORT_VERSION = 1


class StepStatus(enum.StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    #: Not run: an earlier step made it pointless (or unsafe); `figure` says which.
    SKIP = "skip"


class TestVerdict(enum.StrEnum):
    __test__ = False  # not a pytest class, whatever its name

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


#: The steps in the order they run: (name, title). The name is stable (scripts and the
#: fleet key on it); the title is for a person.
STEPS: tuple[tuple[str, str], ...] = (
    ("router", "Router reachable, matched to its profile"),
    ("rules", "The agent's rules in place on the router"),
    ("sip_helper", "SIP helper (ALG) off"),
    ("modem", "Modem present, SIM ready, registered"),
    ("coverage", "LTE coverage"),
    ("location", "Site location recorded"),
    ("calls", "No call in progress"),
    ("primary_voice", "Voice quality on the primary"),
    ("switch_to_lte", "Forced failover to LTE"),
    ("sip_lte", "SBCs answer SIP over LTE"),
    ("voice_lte", "Voice quality over LTE"),
    ("capacity_lte", "Call capacity over LTE"),
    ("guard_lte", "Non-VoIP traffic refused on LTE"),
    ("failback", "Failback to the primary"),
    ("primary_again", "Primary verified again"),
)
STEP_TITLES: dict[str, str] = dict(STEPS)


@dataclass(frozen=True)
class StepResult:
    name: str
    status: StepStatus
    #: One line of figures for a person ("2 of 2 answered, 48 ms and 51 ms").
    figure: str
    #: One sentence of what to do; set on WARN and FAIL, None otherwise.
    remedy: str | None = None
    #: The same figures for machines (numbers with units in their names).
    figures: Mapping[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0

    @property
    def title(self) -> str:
        return STEP_TITLES.get(self.name, self.name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "status": self.status.value,
            "figure": self.figure,
            "figures": dict(self.figures),
            "duration_ms": round(self.duration_ms, 1),
        }
        if self.remedy is not None:
            out["remedy"] = self.remedy
        return out


def passed(name: str, figure: str, **figures: Any) -> StepResult:
    return StepResult(name, StepStatus.PASS, figure, None, figures)


def warned(name: str, figure: str, remedy: str, **figures: Any) -> StepResult:
    return StepResult(name, StepStatus.WARN, figure, remedy, figures)


def failed(name: str, figure: str, remedy: str, **figures: Any) -> StepResult:
    return StepResult(name, StepStatus.FAIL, figure, remedy, figures)


def skipped(name: str, why: str) -> StepResult:
    return StepResult(name, StepStatus.SKIP, why)


def verdict_of(steps: Iterable[StepResult]) -> TestVerdict:
    """FAIL if any step failed, WARN if any warned, else PASS (skipped steps follow a
    failure or a refusal, which already decides the verdict)."""
    statuses = {step.status for step in steps}
    if StepStatus.FAIL in statuses:
        return TestVerdict.FAIL
    if StepStatus.WARN in statuses:
        return TestVerdict.WARN
    return TestVerdict.PASS


@dataclass(frozen=True)
class TestReport:
    __test__ = False  # not a pytest class, whatever its name

    verdict: TestVerdict
    steps: tuple[StepResult, ...]
    device_id: str
    started_wall_s: float
    duration_s: float
    #: Bytes the test itself sent and received over LTE (IP and UDP headers included).
    lte_test_bytes: int
    #: Bytes the LTE interface carried during the test, everything included (phones
    #: re-registering by LTE, the agent's reporting): what the plan is charged.
    lte_interface_bytes: int | None
    max_lte_bytes: int
    max_duration_s: float
    #: Who asked: "installer" (the command line) or "fleet" (the MQTT command).
    requested_by: str
    #: The test did not start its failover: a call was up, or the site was not in its
    #: normal state (the failed step says which).
    refused: bool = False
    #: Stopped before its end (Ctrl-C, the time bound, a crash); the normal state was
    #: restored all the same.
    interrupted: bool = False
    #: Where VoIP goes now, read back from the router after the test.
    voip_path_after: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "report_version": REPORT_VERSION,
            "verdict": self.verdict.value,
            "device_id": self.device_id,
            "started_wall_s": self.started_wall_s,
            "duration_s": round(self.duration_s, 2),
            "lte_test_bytes": self.lte_test_bytes,
            "lte_interface_bytes": self.lte_interface_bytes,
            "max_lte_bytes": self.max_lte_bytes,
            "max_duration_s": self.max_duration_s,
            "requested_by": self.requested_by,
            "refused": self.refused,
            "interrupted": self.interrupted,
            "voip_path_after": self.voip_path_after,
            "counts": {
                status.value: sum(1 for s in self.steps if s.status is status)
                for status in StepStatus
            },
            "steps": [step.to_dict() for step in self.steps],
        }


def event_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report as the `test_finished` event carries it: everything but the per-step
    machine figures and timings (the figure line keeps them readable), to spare LTE bytes."""
    keep = ("name", "status", "figure", "remedy")
    summary = {k: v for k, v in report.items() if k != "steps"}
    summary["steps"] = [{k: step[k] for k in keep if k in step} for step in report.get("steps", [])]
    return summary

"""The installer test as a person reads it: a checklist that fills in, then the verdict.

Pure: text from the report's dictionaries (the same ones `--json` prints).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.installer.report import STEP_TITLES

MARKS = {"pass": "[ ok ]", "warn": "[WARN]", "fail": "[FAIL]", "skip": "[ -- ]"}
RUNNING = "[ .. ]"
#: Exit codes of `cpe-agent failover-test` (docs/installer.md).
EXIT_PASS = 0
EXIT_WARN = 5
EXIT_FAIL = 6
EXIT_REFUSED = 7
EXIT_INTERRUPTED = 130


def header(device_id: str, options: Mapping[str, Any], where: str) -> str:
    return (
        f"Failover test of {device_id} ({where}): at most {options['max_duration_s']:.0f} s "
        f"and {options['max_lte_bytes']:,} bytes of LTE data; VoIP moves to LTE and back."
    )


def running_line(name: str) -> str:
    return f"  {RUNNING} {STEP_TITLES.get(name, name)}"


def step_lines(step: Mapping[str, Any]) -> list[str]:
    mark = MARKS.get(str(step.get("status")), "[ ?? ]")
    title = step.get("title") or STEP_TITLES.get(str(step.get("name")), str(step.get("name")))
    lines = [f"  {mark} {title}: {step.get('figure', '')}"]
    if step.get("remedy"):
        lines.append(f"         -> {step['remedy']}")
    return lines


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    counts = report.get("counts", {})
    verdict = report.get("verdict", "FAIL")
    lines = [
        "",
        f"Verdict: {verdict} ({counts.get('pass', 0)} passed, {counts.get('warn', 0)} "
        f"warnings, {counts.get('fail', 0)} failed, {counts.get('skip', 0)} not run) "
        f"in {report.get('duration_s', 0):.1f} s.",
    ]
    lte = f"LTE data: {report.get('lte_test_bytes', 0):,} bytes of test traffic"
    if report.get("lte_interface_bytes") is not None:
        lte += f", {report['lte_interface_bytes']:,} bytes on the LTE interface in all"
    lines.append(lte + f" (allowed {report.get('max_lte_bytes', 0):,}).")
    if report.get("refused"):
        lines.append("The test did not start its failover: see the failed step.")
    if report.get("interrupted"):
        lines.append("The test was stopped before its end; the normal state was restored.")
    path = report.get("voip_path_after")
    if path == "primary":
        lines.append("VoIP goes by the primary again.")
    elif path == "cellular":
        lines.append("VoIP stays on LTE until the primary is healthy (the agent moves it back).")
    else:
        lines.append("Where VoIP goes now could not be read back: run `cpe-agent status`.")
    for step in report.get("steps", []):
        if step.get("status") == "fail" and step.get("remedy"):
            lines.append(f"To do: {step['remedy']}.")
    lines.append("The report is stored on the device and sent to the provider.")
    return lines


def exit_code(report: Mapping[str, Any], cancelled_here: bool = False) -> int:
    """PASS 0, WARN 5, FAIL 6, refused 7; 130 when the person stopped it (Ctrl-C)."""
    if cancelled_here and report.get("interrupted"):
        return EXIT_INTERRUPTED
    if report.get("refused"):
        return EXIT_REFUSED
    return {"PASS": EXIT_PASS, "WARN": EXIT_WARN}.get(str(report.get("verdict")), EXIT_FAIL)

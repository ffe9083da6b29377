"""The agent's live status: written by the running agent, read by `cpe-agent status`.

A JSON file on tmpfs (the runtime dir), replaced atomically each second, so the CLI
never talks to the running agent and never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
#: A status older than this means the agent is not running (it writes every second).
STALE_AFTER_S = 10.0


def write_status(runtime_dir: Path, status: dict[str, Any]) -> None:
    runtime_dir.mkdir(parents=True, exist_ok=True)
    target = runtime_dir / STATUS_FILE
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2, sort_keys=True))
    os.replace(tmp, target)


def clear_status(runtime_dir: Path) -> None:
    """On a clean stop: no status is truer than a stale one."""
    (runtime_dir / STATUS_FILE).unlink(missing_ok=True)


def read_status(runtime_dir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((runtime_dir / STATUS_FILE).read_text()))
    except (OSError, ValueError):
        return None


def render_status(status: dict[str, Any], now_wall_s: float) -> str:
    """The status as a person reads it: mode, since when, each link's verdict and figures."""
    lines = []
    mode = status.get("mode", "?")
    since = status.get("mode_since_wall_s")
    lines.append(
        f"Mode      {mode}  (VoIP via {status.get('voip_path', '?')}{_ago(since, now_wall_s)})"
    )
    for role in ("primary", "cellular"):
        link = status.get("links", {}).get(role, {})
        figures = []
        if link.get("loss_pct") is not None:
            figures.append(f"loss {link['loss_pct']:.1f}%")
        if link.get("rtt_ms") is not None:
            figures.append(f"rtt {link['rtt_ms']:.0f} ms")
        if link.get("jitter_ms") is not None:
            figures.append(f"jitter {link['jitter_ms']:.0f} ms")
        if link.get("mos") is not None:
            figures.append(f"MOS {link['mos']:.2f}")
        verdict = link.get("verdict", "unknown")
        detail = ", ".join(figures) or "no measurement yet"
        since_text = _ago(link.get("verdict_since_wall_s"), now_wall_s)
        interface = link.get("interface", "?")
        lines.append(f"{role.capitalize():<9} {verdict:<9} {interface}: {detail}{since_text}")
        if link.get("reason"):
            lines.append(f"          {link['reason']}")
    router = status.get("router", {})
    if router:
        sync = (
            "in sync" if router.get("in_sync") else "DRIFT: " + "; ".join(router.get("drift", []))
        )
        lines.append(
            f"Router    {router.get('driver', '?')}, {sync}; "
            f"{router.get('blocked_packets', 0)} non-VoIP packets blocked on LTE"
        )
    for event in status.get("recent_events", [])[-5:]:
        lines.append(f"Event     {event}")
    return "\n".join(lines)


def _ago(wall_s: float | None, now_wall_s: float) -> str:
    if wall_s is None:
        return ""
    seconds = max(0, int(now_wall_s - wall_s))
    if seconds < 120:
        return f", since {seconds} s ago"
    if seconds < 7200:
        return f", since {seconds // 60} min ago"
    return f", since {seconds // 3600} h ago"

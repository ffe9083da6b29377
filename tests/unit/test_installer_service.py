"""One failover test at a time; the fleet's bounds are narrowed, never widened."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agent.app import _fleet_test
from agent.config import InstallerSection
from agent.installer import service as service_module
from agent.installer.service import InstallerService, TestBusyError
from agent.telemetry.commands import CommandFailed


def make_service() -> InstallerService:
    agent: Any = SimpleNamespace(settings=SimpleNamespace(installer=InstallerSection()))
    return InstallerService(agent)


def test_options_narrow_the_configured_bounds_never_widen_them() -> None:
    svc = make_service()
    assert svc.options().max_duration_s == 120.0
    assert svc.options(max_duration_s=60).max_duration_s == 60.0
    assert svc.options(max_duration_s=600).max_duration_s == 120.0
    assert svc.options(max_duration_s=1).max_duration_s == 20.0  # the floor: failback fits
    assert svc.options().max_lte_bytes == 500_000


async def test_a_second_test_is_refused_while_one_runs_and_the_fleet_cannot_force(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = asyncio.Event()
    seen: list[Any] = []

    class FakeRun:
        def __init__(self, agent: Any, options: Any, progress: Any) -> None:
            seen.append(options)

        async def run(self) -> Any:
            await release.wait()
            return SimpleNamespace(to_dict=lambda: {"verdict": "PASS"})

    monkeypatch.setattr(service_module, "FailoverTestRun", FakeRun)
    svc = make_service()
    fleet = asyncio.create_task(svc.run_for_fleet(30.0))
    await asyncio.sleep(0)
    assert svc.busy
    with pytest.raises(TestBusyError):
        svc.start(svc.options())
    agent: Any = SimpleNamespace(installer=svc)
    with pytest.raises(CommandFailed, match="already running"):
        await _fleet_test(agent, 30.0)
    release.set()
    assert await fleet == {"verdict": "PASS"}
    assert seen[0].requested_by == "fleet" and seen[0].force is False
    assert seen[0].max_duration_s == 30.0
    assert not svc.busy

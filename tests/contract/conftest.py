"""The harness fixture: the same contract tests for every router the agent can drive."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from hil.rigs import routeros as rig

from .harness import Harness, LinuxHarness, RigHarness, RouterOSSimHarness, linux_skip_reason

ROUTERS = ["routeros-6.49", "routeros-7.17", "routeros-7.18", "linux", "routeros-rig"]


@pytest.fixture(params=ROUTERS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    name: str = request.param
    made: Harness
    if name.startswith("routeros-") and name != "routeros-rig":
        made = RouterOSSimHarness(name.removeprefix("routeros-"))
    elif name == "linux":
        reason = linux_skip_reason()
        if reason:
            pytest.skip(reason)
        made = LinuxHarness()
    else:
        config, reason = rig.from_env()
        if config is None:
            pytest.skip(reason)
        made = RigHarness(config)
    try:
        yield made
    finally:
        await made.close()

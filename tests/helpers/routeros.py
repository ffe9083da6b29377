"""The RouterOS simulator and a driver logged in to it: fixtures shared by the RouterOS
driver and fault tests (import them into a test module to use them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from drivers.router.routeros.driver import RouterOSDriver
from hil.sims.routeros import RouterOSSim
from tests.contract.harness import PASSWORD, USER


@pytest.fixture(params=["6.49", "7.18"])
def sim(request: pytest.FixtureRequest) -> Iterator[RouterOSSim]:
    with RouterOSSim(profile=request.param, user=USER, password=PASSWORD,
                     ping_time_scale=0.02) as s:
        yield s


def make_driver(sim: RouterOSSim, **options: object) -> RouterOSDriver:
    """A driver for the simulator: plain API, short timeouts and back-off."""
    host, port = sim.address
    settings: dict[str, object] = dict(host=host, port=port, username=USER, password=PASSWORD,
                                       plain_api=True, timeout_s=1.0, backoff_min_s=0.01,
                                       backoff_max_s=0.05)
    settings.update(options)
    return RouterOSDriver(**settings)  # type: ignore[arg-type]


@pytest.fixture
async def driver(sim: RouterOSSim) -> AsyncIterator[RouterOSDriver]:
    made = make_driver(sim)
    await made.open()
    try:
        yield made
    finally:
        await made.close()

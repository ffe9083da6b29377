"""The open() checks against literal print rows (a fake `call`, no router)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pytest

from drivers import profiles
from drivers.errors import NeedsHumanError
from drivers.router.routeros import checks
from drivers.router.routeros.transport import ApiTrap

SET = profiles.load_router_profiles("routeros")


def fake(menus: Mapping[str, list[dict[str, str]]]) -> checks.Call:
    async def call(command: str, args: object = None, *, queries: Sequence[str] = (),
                   proplist: object = None) -> list[dict[str, str]]:
        if command not in menus:
            raise ApiTrap(command, [("no such command or directory (service)", "0")])
        rows = menus[command]
        for query in queries:
            name, _, value = query[1:].partition("=")
            rows = [r for r in rows if r.get(name) == value]
        return rows

    return call


async def test_a_group_without_write_and_test_is_named() -> None:
    call = fake({"/user/print": [{"name": "agent", "group": "ro"}],
                 "/user/group/print": [{"name": "ro", "policy": "api,read,!write,!test"}]})
    with pytest.raises(NeedsHumanError, match="group 'ro', which lacks the write and test"):
        await checks.privileges(call, "agent")


async def test_an_unknown_user_is_named() -> None:
    with pytest.raises(NeedsHumanError, match="does not list the agent's user 'ghost'"):
        await checks.privileges(fake({"/user/print": []}), "ghost")


@pytest.mark.parametrize(("version", "prop"), [((7, 23), "address"),
                                                ((7, 24), "available-from"),
                                                ((6, 49, 17), "address")])
async def test_api_service_warning_uses_the_versions_property(
        version: tuple[int, ...], prop: str, caplog: pytest.LogCaptureFixture) -> None:
    profile = profiles.match(SET, "routeros", version, ["RB2011UiAS"])
    rows = [
        {"name": "api-ssl", "port": "8729", "disabled": "false", prop: ""},
        {"name": "api", "port": "8728", "disabled": "true"},
        {"name": "api-ssl", "dynamic": "true"},  # 7.19+: a connection, not the service
        {"name": "winbox", "disabled": "false"},
    ]
    with caplog.at_level(logging.WARNING):
        await checks.api_service(fake({"/ip/service/print": rows}), profile, "192.0.2.1")
    assert caplog.text.count("accepts connections from any address") == 1
    assert f"api-ssl {prop}=<agent>/32" in caplog.text
    caplog.clear()
    rows[0][prop] = "192.168.88.10/32"
    with caplog.at_level(logging.WARNING):
        await checks.api_service(fake({"/ip/service/print": rows}), profile, "192.0.2.1")
    assert "any address" not in caplog.text


async def test_a_router_without_ip_service_is_not_an_error() -> None:
    await checks.api_service(fake({}), None, "192.0.2.1")

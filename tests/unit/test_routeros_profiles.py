"""firmware-profiles/router/routeros: every file loads, every quirk cites its evidence, and
routers are matched by what they say about themselves."""

from __future__ import annotations

import pytest

from drivers import profiles
from drivers.errors import UnsupportedError
from hil.sims.routeros import MODELS, PROFILES

SET = profiles.load_router_profiles("routeros")


def test_every_profile_loads_without_problems() -> None:
    assert SET.problems == ()
    assert {line.line for line in SET.os_lines} == {"6.49", "7"}
    assert {m.key for m in SET.models} == {"RB2011", "hAP-ac2", "hAP-ax2", "hAP-ax3", "RB5009",
                                          "Chateau-LTE"}


def test_every_quirk_and_model_cites_evidence_and_how_it_was_checked() -> None:
    for line in SET.os_lines:
        assert line.checked_against
        for quirk in line.quirks:
            assert quirk.evidence and all(e.strip() for e in quirk.evidence), quirk.name
            assert quirk.why
    for model in SET.models:
        assert model.evidence and model.checked_against


@pytest.mark.parametrize(("version", "line", "dates", "empty", "service"), [
    ((6, 49, 17), "6.49", "mon/dd/yyyy", False, "address"),
    ((7, 8), "7", "mon/dd/yyyy", False, "address"),
    ((7, 10), "7", "yyyy-mm-dd", False, "address"),
    ((7, 17, 2), "7", "yyyy-mm-dd", False, "address"),
    ((7, 18, 2), "7", "yyyy-mm-dd", True, "address"),
    ((7, 24), "7", "yyyy-mm-dd", True, "available-from"),
])
def test_quirks_by_version(version: tuple[int, ...], line: str, dates: str, empty: bool,
                           service: str) -> None:
    profile = profiles.match(SET, "routeros", version, ["RB2011UiAS"])
    assert profile.os_line.line == line
    assert profile.quirk("date_format") == dates
    assert profile.quirk("sends_empty") is empty
    assert profile.quirk("api_service_address_property") == service
    assert profile.os_line.routing == ("routing-mark" if line == "6.49" else "routing-table")


@pytest.mark.parametrize("version", [(6, 48, 6), (5, 26), (6, 43)])
def test_older_firmware_is_unsupported_with_a_remedy(version: tuple[int, ...]) -> None:
    with pytest.raises(UnsupportedError, match="upgrade the router"):
        profiles.match(SET, "routeros", version, ["RB2011UiAS"])


@pytest.mark.parametrize("key", sorted(MODELS))
def test_the_simulators_boards_are_recognised(key: str) -> None:
    model = MODELS[key]
    profile = profiles.match(SET, "routeros", (7, 18, 2), [model.board_name, model.model])
    assert profile.model is not None and profile.model.key == key
    if model.modem_port:
        assert profile.model.lte_interface == model.modem_port
    else:
        assert profile.model.lte_interface == "lte1" and profile.model.lte_kind == "built-in"


@pytest.mark.parametrize(("board", "key"), [
    ("hAP ax^2", "hAP-ax2"), ("C52iG-5HaxD2HaxD", "hAP-ax2"), ("RB2011iL-IN", "RB2011"),
    ("Chateau LTE6", "Chateau-LTE"), ("CCR2004-1G-12S+2XS", None),
])
def test_board_names(board: str, key: str | None) -> None:
    model = profiles.match(SET, "routeros", (7, 18), [board]).model
    assert (model.key if model else None) == key


def test_describe_names_model_version_line_and_files() -> None:
    known = profiles.match(SET, "routeros", (7, 18, 2), ["RB2011UiAS"])
    assert known.describe() == "RB2011UiAS on routeros 7.18.2 (line 7): rb2011.toml, os-7.toml"
    unknown = profiles.match(SET, "routeros", (6, 49, 17), ["CCR2004-1G-12S+2XS"])
    assert unknown.describe() == (
        "unknown model 'CCR2004-1G-12S+2XS' on routeros 6.49.17 (line 6.49 defaults): "
        "os-6.49.toml")


def test_container_support_and_memory() -> None:
    by_key = {m.key: m for m in SET.models}
    assert not by_key["RB2011"].container_support and not by_key["hAP-ac2"].container_support
    assert by_key["RB5009"].container_support and by_key["hAP-ax3"].memory_mb == 1024


def test_the_simulator_profiles_are_all_covered() -> None:
    for sim in PROFILES.values():
        version = tuple(int(p) for p in sim.firmware.split("."))
        assert profiles.match(SET, "routeros", version, []).os_line


def test_bad_files_are_problems_not_crashes() -> None:
    parsed = profiles.parse_profiles([
        ("a.toml", {"kind": "os", "os": "routeros", "line": "8", "min_version": "8.0",
                    "routing": "vrf", "checked_against": "x"}),
        ("b.toml", {"kind": "model"}),
        ("c.toml", {"kind": "toaster"}),
        ("d.toml", {"kind": "os", "os": "routeros", "line": "9", "min_version": "9.0",
                    "routing": "routing-table", "checked_against": "x",
                    "quirks": [{"name": "q", "value": 1, "why": "w", "evidence": []}]}),
    ])
    assert parsed.os_lines == () and parsed.models == ()
    assert len(parsed.problems) == 4
    assert any("evidence must not be empty" in p for p in parsed.problems)

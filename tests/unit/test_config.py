"""Configuration: the example validates; every broken file gets one sentence per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "packaging" / "agent.example.toml"

MINIMAL = """
[agent]
device_id = "site-1"
[links.primary]
interface = "wan0"
[links.cellular]
interface = "lte0"
gateway = "100.64.100.1"
[voip]
lan_interfaces = ["lan0"]
sbc_addresses = ["203.0.113.10", "203.0.113.11"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_example_config_validates():
    settings = load_settings(EXAMPLE)
    assert settings.agent.device_id == "acme-dental-main"
    assert settings.failover.dwell_s == 120
    assert settings.probe_targets() == ["203.0.113.10", "203.0.113.11"]


def test_minimal_config_gets_documented_defaults(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.router.driver == "linux"
    assert settings.failover.dwell_s == 120
    assert settings.failover.max_call_wait_s == 600
    assert settings.plan.overage_usd_per_gb == 15
    assert settings.voip_prefixes() == ["203.0.113.10/32", "203.0.113.11/32"]


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CPE_AGENT_FAILOVER__DWELL_S", "30")
    monkeypatch.setenv("CPE_AGENT_MQTT__HOST", "203.0.113.30")
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.failover.dwell_s == 30
    assert settings.mqtt.host == "203.0.113.30"


def test_secret_file_is_checked(tmp_path):
    text = MINIMAL + '[mqtt]\nhost = "203.0.113.30"\npassword_file = "/nonexistent/pw"\n'
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert "[mqtt] password_file" in err.value.problems[0]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace('device_id = "site-1"', 'device_id = "Site_1"'), "[agent] device_id"),
        (lambda t: t.replace('interface = "lte0"', 'interface = "wan0"'), "different interfaces"),
        (lambda t: t.replace('"203.0.113.11"', '"not-an-ip"'), "[voip] sbc_addresses.1"),
        (lambda t: t.replace("[voip]", "[voip]\nrtp_port_min = 30000"), "rtp_port_min"),
        (lambda t: t + "[health]\nprimary_intervall_s = 1\n", "not a known setting"),
        (lambda t: t + "[failover]\ndwell_s = -5\n", "[failover] dwell_s"),
        (lambda t: t.replace('[links.cellular]\ninterface = "lte0"\n', ""), "[links] cellular"),
        (lambda t: t + '[router]\ndriver = "routeros"\n', "needs 'host'"),
        (lambda t: t + '[router]\ndriver = "cisco"\n', "[router] driver"),
    ],
)
def test_each_problem_is_one_sentence_naming_file_and_key(tmp_path, edit, expected):
    path = write(tmp_path, edit(MINIMAL))
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    problems = err.value.problems
    assert any(expected in p for p in problems), problems
    for problem in problems:
        assert problem.startswith(str(path))
        assert problem.endswith(".")
        assert "\n" not in problem


def test_several_problems_are_all_reported(tmp_path):
    text = MINIMAL.replace('"site-1"', '"BAD ID"').replace('"203.0.113.11"', '"x"')
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert len(err.value.problems) == 2


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "[agent\n"))
    assert "not valid TOML" in err.value.problems[0]
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "absent.toml")
    assert "does not exist" in err.value.problems[0]


def test_broker_addresses_follow_voip_onto_lte(tmp_path):
    from agent.app import build_policy

    text = MINIMAL + '[mqtt]\nhost = "mqtt.example"\nbroker_addresses = ["203.0.113.30"]\n'
    policy = build_policy(load_settings(write(tmp_path, text)))
    assert policy.agent_prefixes == ("203.0.113.30/32",)
    text = MINIMAL + '[mqtt]\nhost = "203.0.113.31"\n'
    assert build_policy(load_settings(write(tmp_path, text))).agent_prefixes == ("203.0.113.31/32",)

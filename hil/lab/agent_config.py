"""The agent's configuration for the lab (`<lab dir>/agent.toml`), written as TOML text.

`tomllib` only reads, so the file is rendered here; the shape is the one
`agent/config.py` reads. Health timings are shortened for the lab (said so in the file).
"""

from __future__ import annotations

import json
from pathlib import Path

from hil.lab import topology as t

DEVICE_ID = "lab-site-1"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML rendering for {type(value).__name__}")


def render_agent_config(lab_dir: Path) -> str:
    """The agent.toml text for a lab whose files live in `lab_dir`."""
    sections: list[tuple[str, list[str], dict[str, object]]] = [
        ("agent", [], {
            "device_id": DEVICE_ID,
            "state_dir": str(lab_dir / "state"),
            "runtime_dir": str(lab_dir / "runtime"),
        }),
        ("router", [], {"driver": "linux"}),
        ("links.primary", [], {"interface": t.PRIMARY_IF}),
        ("links.cellular", [], {"interface": t.CELLULAR_IF, "gateway": t.CELLULAR_GATEWAY}),
        ("voip", [], {
            "lan_interfaces": [t.LAN_BRIDGE],
            "sbc_addresses": list(t.SBC_ADDRESSES.values()),
            "sip_ports": [5060, 5061],
            "rtp_port_min": 10000,
            "rtp_port_max": 20000,
        }),
        ("health", [
            "# Shortened for the lab: a silent outage is declared after 0.8 s",
            "# (production defaults: primary_interval_s = 0.25, down_after_s = 1.0).",
        ], {"primary_interval_s": 0.2, "down_after_s": 0.8}),
        ("failover", ["# Shortened for the lab (production default 120 s)."], {"dwell_s": 10}),
        ("modem", ["# The simulated LTE modem (hil/sims/at_modem.py) on a pty."], {
            "driver": "at",
            "port": str(lab_dir / "modem.tty"),
            "poll_s": 5.0,
        }),
        ("mqtt", ["# The lab's broker listens without TLS on the provider's address."], {
            "host": t.MQTT_ADDRESS,
            "port": t.MQTT_PORT,
            "tls": False,
        }),
    ]
    lines = [
        "# cpe-agent configuration for the virtual lab, written by `python -m hil.lab up`.",
        "# Rewritten on every `up`; removed by `down`. Do not edit: change hil/lab instead.",
    ]
    for name, comments, values in sections:
        lines += ["", f"[{name}]", *comments]
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"

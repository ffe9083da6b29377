"""The agent's MQTT client, and the fleet side's. paho is imported by `transport` only.

- `device`: `TelemetryClient`, what the agent calls, and its reconnect loop.
- `link`: one network connection of the device: connect, serve, close, callbacks.
- `fleet`: `FleetClient`, the provider's subscriber (notifier, console).
- `transport`: paho: the clients, TLS, callbacks guarded so they never raise into
  paho's network thread.
- `options`: `MqttOptions`, `TelemetryError`, the password and the TLS context.
- `backoff`: pure: when to try again, and why.

Import from here: the names below are the package's public API.
"""

from agent.telemetry.mqtt.backoff import backoff_delay_s
from agent.telemetry.mqtt.device import TelemetryClient
from agent.telemetry.mqtt.fleet import Delivery, FleetClient
from agent.telemetry.mqtt.link import MessageSink
from agent.telemetry.mqtt.options import MqttOptions, TelemetryError, Uplink

__all__ = [
    "Delivery",
    "FleetClient",
    "MessageSink",
    "MqttOptions",
    "TelemetryClient",
    "TelemetryError",
    "Uplink",
    "backoff_delay_s",
]

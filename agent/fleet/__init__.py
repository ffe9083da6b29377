"""The provider's side of the MQTT contract: the failover notifier (email) and the
fleet console (`cpe-agent fleet watch`). It runs at the provider, not at the site;
it speaks MQTT only through `agent.telemetry.mqtt.FleetClient` and reads payloads
with `agent.telemetry.contract`. See docs/fleet.md.
"""

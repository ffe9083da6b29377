"""Reporting to the provider's fleet over MQTT.

`contract` (topics and payload models, pure), `outbox` (store-and-forward over the
event log), `mqtt` (the only paho user). Importing this package imports none of them,
so the pure contract can be used without paho.
"""

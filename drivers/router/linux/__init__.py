"""The Linux router driver: nftables + netlink on the box the agent runs on.

`rules` and `readback` are pure (no I/O) and import without pyroute2; `driver` holds
LinuxRouterDriver and is loaded lazily through `drivers.registry`.
"""

"""Device drivers for cpe-agent: routers and modems. Knows nothing of `agent`."""

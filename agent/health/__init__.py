"""Link health: probes (what to send), scoring (pure: samples -> verdict, E-model MOS),
monitor (the shell that schedules probes per link and publishes assessments).

Deliberately empty of imports: `agent.domain` and the pure failover code import
`agent.health.scoring`, and importing this package must not pull in sockets or asyncio.
"""

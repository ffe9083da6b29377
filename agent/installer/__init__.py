"""The installer's failover test: one command that proves a site is ready.

`report` (the shape), `judge` (pure verdicts per step), `echo_figures` (pure round-trip
and capacity figures), `echo` (the UDP echo client), `runner` (the steps, in the agent),
`service` (one test at a time, for the command line and the fleet), `render` (for a
person). See docs/installer.md.
"""

"""The data meter: every LTE byte counted against the calendar-month plan.

Pure parts (no I/O, no clock, no logging; tested from tables):
  counter     raw interface counters -> deltas across resets, wraps and source changes
  cycle       calendar-month billing cycles: start day, time zone, DST
  budget      plan arithmetic: thresholds, overage, projection, talk minutes, primary use
  clocktrust  when the wall clock can be believed, and what time bytes really belong to
  ledger      the meter's persisted document and how counted bytes change it
  report      the snapshot people and the fleet read

Shell (I/O): `meter.Meter` polls the router and persists through `persist.MeterDB`;
`admin` reads and resets the books for the CLI and the fleet; `timesync` asks the OS.
See docs/meter.md.
"""

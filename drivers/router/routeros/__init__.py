"""The RouterOS router driver: a MikroTik driven over the RouterOS API (see README.md).

`commands`, `parse` and `reconcile` are pure (no I/O) and import without librouteros;
`transport` is the only module that imports librouteros; `driver` holds RouterOSDriver
and is loaded lazily through `drivers.registry`.
"""

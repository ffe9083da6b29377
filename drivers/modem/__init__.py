"""Cellular modem drivers: AT over a serial port, Netgear's JSON API, MikroTik's built-in LTE."""

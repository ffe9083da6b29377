"""AT modems: the channel (framing, echo, URCs, timeouts), 27.007 parsers, generic driver."""

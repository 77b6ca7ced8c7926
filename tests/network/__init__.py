"""Network tests: the wire format, the TCP transport, and real node processes over TCP."""

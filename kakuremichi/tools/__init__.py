"""`kakuremichi wg`: tools built on the userspace WireGuard and the netstack (key generation, ping, port
forwarding), kept out of the protocol package `kakuremichi.wg`, which needs neither the netstack nor Trio's
streams."""

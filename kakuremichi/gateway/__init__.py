"""The public gateway: HTTP(S) in, routed by Host/SNI through WireGuard to the tunnel's agent."""

"""The agent: runs next to private services, dials out to every gateway, and forwards tunnel
connections to local targets. Outbound UDP only; no root, no TUN, nothing Linux-only."""

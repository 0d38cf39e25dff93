"""The gateway's certificates: ACME orders (shared by all gateways through control), the store on disk,
self-signed fallbacks, HTTP-01 challenges, and SNI selection in the TLS context."""

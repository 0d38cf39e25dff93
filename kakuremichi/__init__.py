"""kakuremichi: a self-hosted tunnel with its own userspace WireGuard and TCP/IP stack."""

__version__ = "0.1.0"

"""TLS for the HTTPS listener: hardened server contexts and certificate choice by SNI.

One ssl.SSLContext per certificate; the listener's context only carries an SNI callback that swaps
in the right one during the handshake, so certificates can be added and renewed while connections
are being accepted, without touching connections already established.
"""

from __future__ import annotations

import os
import ssl

from kakuremichi.values import InvalidHost, request_host, wildcard_parent

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are OpenSSL's (all modern).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN = ["h2", "http/1.1"]  # HTTP/2 for clients that offer it (http/http2.py), else HTTP/1.1


def server_context(pem_path: str | os.PathLike) -> ssl.SSLContext:
    """A server context for a PEM holding private key and chain (see store.py)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                        | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE)
    context.set_alpn_protocols(ALPN)
    context.load_cert_chain(pem_path)
    return context


class CertificateSelector:
    """Domain → SSLContext, consulted by SNI; `context` is what the HTTPS listener wraps streams with."""

    def __init__(self, fallback_pem: str | os.PathLike) -> None:
        self.context = server_context(fallback_pem)
        self.context.sni_callback = self._select
        self._by_domain: dict[str, ssl.SSLContext] = {}

    def install(self, domain: str, pem_path: str | os.PathLike) -> None:
        """Serve the certificate at `pem_path` for `domain` from the next handshake on."""
        self._by_domain[domain] = server_context(pem_path)

    def remove(self, domain: str) -> None:
        self._by_domain.pop(domain, None)

    def domains(self) -> set[str]:
        return set(self._by_domain)

    def _select(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        """SNI callback: no name, an invalid one or an unknown one keeps the fallback certificate."""
        if not server_name:
            return
        try:
            name = request_host(server_name)
        except InvalidHost:
            return
        context = self._by_domain.get(name)
        if context is None and (parent := wildcard_parent(name)):
            context = self._by_domain.get(parent)
        if context is not None:
            connection.context = context

"""A certificate chain and its private key as PEM: the checks made before anyone keeps or serves one.

Shared by the gateway's certificate store and control, which stores the certificates gateways upload
for the others: both refuse a key that does not belong to the leaf or a leaf that does not cover the domain.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtensionOID


class CertificateError(ValueError):
    """A certificate/key pair that can't be served (mismatched key, wrong names, unparsable PEM)."""


def names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names of the subjectAltName, lowercased."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))


def covers(dns_names: tuple[str, ...], domain: str) -> bool:
    parent = domain.partition(".")[2]
    return domain in dns_names or (bool(parent) and f"*.{parent}" in dns_names)


def check_pair(domain: str, chain_pem: bytes, key_pem: bytes) -> tuple[list[x509.Certificate], PrivateKeyTypes]:
    """The parsed chain (leaf first) and key, once they are known to belong together and to cover `domain`."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise CertificateError(f"{domain}: unreadable certificate or key ({exc})") from None
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CertificateError(f"{domain}: the private key does not belong to the certificate")
    if not covers(names(leaf), domain):
        raise CertificateError(f"{domain}: the certificate is for {', '.join(names(leaf)) or 'no DNS name'}")
    return chain, key

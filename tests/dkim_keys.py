"""A DKIM key made for a test, with what a DNS lookup of its selector would answer (no network)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SELECTOR = "s1._domainkey.example.com."
KEY_ENV = "TEST_DKIM_KEY"


@dataclass(frozen=True)
class DkimKey:
    pem: str
    """The private key, as the transport's `private_key_env` variable holds it."""
    record: bytes
    """The TXT record of the selector."""

    def dns(self) -> Callable[..., bytes | None]:
        """`dnsfunc` for dkim.verify: the record for our selector, nothing for any other name."""
        return lambda name, timeout=5: self.record if name == SELECTOR.encode() else None


def dkim_key() -> DkimKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return DkimKey(pem.decode(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(public))


def sign_with_dkim(root: Path) -> None:
    """The workspace's `sink` transport signs with the test key (its settings carry `timeout: 10`)."""
    settings = root / "spec/settings.yaml"
    signing = f"timeout: 10\n    dkim: {{domain: example.com, selector: s1, private_key_env: {KEY_ENV}}}"
    settings.write_text(settings.read_text().replace("timeout: 10", signing))

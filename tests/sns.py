"""Amazon SNS messages as SNS signs them, with a key and certificate made for the test (no AWS, no network)."""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey


def sns_key_and_certificate() -> tuple[RSAPrivateKey, bytes]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"


def sns_message(
    key: RSAPrivateKey, message: dict[str, object], version: str = "1", *, topic: str = "arn:aws:sns:eu-west-1:123:ses"
) -> dict[str, object]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    notification: dict[str, object] = {
        "Type": "Notification",
        "MessageId": f"m-{time.time_ns()}",
        "Timestamp": "2026-11-24T10:00:00.000Z",
        "TopicArn": topic,
        "Message": json.dumps(message),
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
    }
    keys = ["Message", "MessageId", "Timestamp", "TopicArn", "Type"]
    text = "".join(f"{k}\n{notification[k]}\n" for k in keys).encode()
    algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
    notification["Signature"] = base64.b64encode(key.sign(text, padding.PKCS1v15(), algorithm)).decode()
    return notification

"""Release signing keys: Ed25519, the private half with whoever publishes models (the
trainer, an operator), only public halves with the workers.

A worker that is compromised can therefore not sign a release, and keys rotate by
trusting several public keys for a while: each signature names its ``key_id`` (the first
16 hex digits of the SHA-256 of the raw public key).

Files are PEM: ``release.key`` (PKCS#8 private key, mode 0600) and ``release.pub``
(SubjectPublicKeyInfo), as ``vigil keys generate`` writes them; ``openssl genpkey
-algorithm ed25519`` makes the same kind of key.

>>> signer = SigningKey.generate()
>>> trusted = TrustedKeys([signer.public_key()])
>>> sig = signer.sign(b"manifest")
>>> trusted.verify(b"manifest", sig)
>>> trusted.verify(b"forged", sig)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
vigil.models.signing.SignatureError: bad signature: not made with key ... over these bytes
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vigil.errors import VigilError

__all__ = [
    "ALGORITHM",
    "SignatureError",
    "SigningKey",
    "TrustedKeys",
    "dev_signing_key",
    "generate_keypair",
    "key_id",
]

ALGORITHM = "ed25519"
PRIVATE_NAME, PUBLIC_NAME = "release.key", "release.pub"


class SignatureError(VigilError):
    """A signature that does not verify, or a key that cannot be read."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class SigningKey:
    """The private key that signs releases."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.key_id = key_id(private.public_key())

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise SignatureError(f"cannot read signing key {str(path)!r}: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"{str(path)!r} is not a PEM private key: {exc}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise SignatureError(f"{str(path)!r} is not an Ed25519 key")
        return cls(private)

    def public_key(self) -> Ed25519PublicKey:
        return self._private.public_key()

    def sign(self, data: bytes) -> dict[str, str]:
        """``{"alg", "key_id", "value"}`` (value: base64) over ``data``."""
        value = base64.b64encode(self._private.sign(data)).decode("ascii")
        return {"alg": ALGORITHM, "key_id": self.key_id, "value": value}

    def save(self, directory: Path) -> tuple[Path, Path]:
        """Write ``release.key`` (0600) and ``release.pub`` into ``directory``; the private
        key appears whole or not at all, and never replaces one that is there
        (FileExistsError)."""
        directory.mkdir(parents=True, exist_ok=True)
        private_path, public_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".release-key-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            os.link(tmp, private_path)  # atomic, and fails where a key exists
        finally:
            os.unlink(tmp)
        public_path.write_bytes(
            self.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return private_path, public_path


class TrustedKeys:
    """The public keys a worker accepts release signatures from, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self.keys = {key_id(k): k for k in keys}

    @classmethod
    def load(cls, paths: Iterable[Path]) -> TrustedKeys:
        keys = []
        for path in paths:
            try:
                public = serialization.load_pem_public_key(path.read_bytes())
            except OSError as exc:
                raise SignatureError(
                    f"cannot read public key {str(path)!r}: {exc.strerror}"
                ) from None
            except ValueError as exc:
                raise SignatureError(f"{str(path)!r} is not a PEM public key: {exc}") from None
            if not isinstance(public, Ed25519PublicKey):
                raise SignatureError(f"{str(path)!r} is not an Ed25519 public key")
            keys.append(public)
        return cls(keys)

    def verify(self, data: bytes, signature: object) -> None:
        """Raise :class:`SignatureError` unless ``signature`` (as ``SigningKey.sign`` makes
        it) is a valid Ed25519 signature over ``data`` by a trusted key."""
        if not isinstance(signature, dict) or signature.get("alg") != ALGORITHM:
            raise SignatureError(f"not an {ALGORITHM} signature (unsigned, or an HMAC release)")
        public = self.keys.get(str(signature.get("key_id")))
        if public is None:
            raise SignatureError(
                f"signed with key {str(signature.get('key_id'))[:32]!r}, which this worker "
                f"does not trust (trusted: {', '.join(sorted(self.keys)) or 'none'})"
            )
        try:
            raw = base64.b64decode(str(signature.get("value", "")), validate=True)
            public.verify(raw, data)
        except (InvalidSignature, ValueError):
            raise SignatureError(
                f"bad signature: not made with key {signature['key_id']} over these bytes"
            ) from None


def generate_keypair(directory: Path) -> tuple[Path, Path]:
    """A new signing key pair in ``directory``: refuses to overwrite a private key."""
    try:
        return SigningKey.generate().save(directory)
    except FileExistsError:
        raise SignatureError(f"{str(directory / PRIVATE_NAME)!r} exists: not overwritten") from None


def dev_signing_key(directory: Path) -> SigningKey:
    """The development key pair in ``directory``, made by the first process that needs it
    (a worker and a trainer starting together get the same one)."""
    path = directory / PRIVATE_NAME
    for _ in range(3):
        if path.exists():
            return SigningKey.load(path)
        try:
            key = SigningKey.generate()
            key.save(directory)
            return key
        except FileExistsError:  # another process made it first: use that one
            time.sleep(0.05)
    return SigningKey.load(path)

"""Certificates for the engines inside learner machines: each machine's dockerd listens
on TLS and accepts only Berth's client certificate, so no other machine (of this session
or another) can drive it, and Berth can tell it is talking to the right machine."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


@dataclass(frozen=True)
class ServerCertificate:
    """What goes into a machine: the CA that signs Berth's client certificate, and the
    machine's own server certificate and key (usable for serving only, not as a client)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


class CertificateAuthority:
    """A CA kept in Berth's data folder. Its key never leaves that folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_cert_path = folder / "ca.pem"
        self.client_cert_path = folder / "client-cert.pem"
        self.client_key_path = folder / "client-key.pem"
        key_path = folder / "ca-key.pem"
        if key_path.exists() and self.ca_cert_path.exists():
            self._key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            self._cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        else:
            self._key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Berth machine engines CA")])
            now = datetime.datetime.now(datetime.UTC)
            self._cert = (
                x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(self._key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                .sign(self._key, hashes.SHA256())
            )
            _write_private(key_path, _pem_key(self._key))
            self.ca_cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
            for stale in (self.client_cert_path, self.client_key_path):
                stale.unlink(missing_ok=True)
        if not (self.client_cert_path.exists() and self.client_key_path.exists()):
            cert, key = self._issue("berth", [], ExtendedKeyUsageOID.CLIENT_AUTH)
            _write_private(self.client_key_path, key)
            self.client_cert_path.write_bytes(cert)

    @property
    def ca_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def server_certificate(self, name: str, addresses: list[str]) -> ServerCertificate:
        """A certificate for a machine's engine, valid for its name and network addresses."""
        sans: list[x509.GeneralName] = [x509.DNSName(name)]
        sans += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
        cert, key = self._issue(name, sans, ExtendedKeyUsageOID.SERVER_AUTH)
        return ServerCertificate(self.ca_pem, cert, key)

    def _issue(self, common_name: str, sans: list, usage) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

"""A private certificate authority for a test deployment: ``rtgrid certs``.

Makes a CA, a server certificate (SAN 127.0.0.1, localhost and any given names), client
certificates for agents and an operator certificate. A client certificate carries its role in
the subject's organizational unit (``OU=agent`` or ``OU=operator``); the master reads it from the
verified peer certificate (see :mod:`.auth`). Keys are ECDSA P-256, written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

AGENT_ROLE, OPERATOR_ROLE = "agent", "operator"
CLIENT_ROLES = (AGENT_ROLE, OPERATOR_ROLE)
DEFAULT_VALID_DAYS = 365
LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM bytes."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        # The key is created private: no moment where another user could read it.
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.key_pem)
        return cert, key


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(common_name: str, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rtgrid"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if unit:
        attrs.insert(1, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew between boxes
        .not_valid_after(now + dt.timedelta(days=days))
    )


def make_ca(name: str = "rtgrid private CA", days: int = DEFAULT_VALID_DAYS) -> Issued:
    """A self-signed certificate authority."""
    key = _key()
    subject = _name(name)
    cert = (
        _builder(subject, subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _issue(ca: Issued, subject: x509.Name, usage: x509.ObjectIdentifier, days: int,
           san: x509.SubjectAlternativeName | None = None) -> Issued:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = _key()
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return Issued(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_server_cert(ca: Issued, names: list[str] = (), days: int = DEFAULT_VALID_DAYS) -> Issued:
    """The master's certificate: valid for 127.0.0.1, localhost and ``names`` (DNS names or IPs)."""
    all_names = [*LOOPBACK_NAMES, *names]
    return _issue(ca, _name(all_names[-1] if names else "localhost"), ExtendedKeyUsageOID.SERVER_AUTH, days,
                  _san(all_names))


def make_client_cert(ca: Issued, common_name: str, role: str, days: int = DEFAULT_VALID_DAYS) -> Issued:
    """A client certificate for an agent or an operator; ``role`` goes in the subject's OU."""
    if role not in CLIENT_ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(CLIENT_ROLES)}")
    return _issue(ca, _name(common_name, role), ExtendedKeyUsageOID.CLIENT_AUTH, days)


def client_role(cert_pem: bytes) -> tuple[str, str]:
    """``(role, common name)`` of a client certificate made by :func:`make_client_cert`."""
    subject = x509.load_pem_x509_certificate(cert_pem).subject
    units = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (str(units[0].value) if units else "", str(names[0].value) if names else "")


def write_deployment(out: Path, server_names: list[str], agents: list[str], operators: list[str],
                     days: int = DEFAULT_VALID_DAYS) -> dict[str, str]:
    """Write ``ca``, ``server``, ``agent-NAME`` and ``operator-NAME`` certificates into ``out``.

    Returns
    -------
    dict[str, str]
        Which file is which (``ca``, ``server_cert``, ``agent:NAME:cert`` ...), for scripts.
    """
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca(days=days)
    files: dict[str, str] = {}
    files["ca"], files["ca_key"] = map(str, ca.write(out, "ca"))
    files["server_cert"], files["server_key"] = map(str, make_server_cert(ca, server_names, days).write(out, "server"))
    for role, names in ((AGENT_ROLE, agents), (OPERATOR_ROLE, operators)):
        for name in names:
            cert, key = make_client_cert(ca, name, role, days).write(out, f"{role}-{name}")
            files[f"{role}:{name}:cert"], files[f"{role}:{name}:key"] = str(cert), str(key)
    return files


def certs_command(
    out: Path = typer.Option(Path("rtgrid-certs"), "--out", help="Folder to write the PEM files into."),
    server_name: list[str] = typer.Option([], "--server-name", help="Another DNS name or IP of the master (repeatable)."),
    agent: list[str] = typer.Option(["agent"], "--agent", help="An agent certificate to make (repeatable)."),
    operator: list[str] = typer.Option(["operator"], "--operator", help="An operator certificate to make (repeatable)."),
    days: int = typer.Option(DEFAULT_VALID_DAYS, help="Validity in days."),
) -> None:
    """Make a private CA and certificates for a test deployment: the master's server certificate
    (127.0.0.1, localhost and --server-name), agent client certificates and operator certificates.

    Prints one JSON object naming the files. Keep ``ca.key`` offline; give each agent its own pair.
    """
    files = write_deployment(out.resolve(), server_name, agent, operator, days)
    print(json.dumps(files, sort_keys=True))

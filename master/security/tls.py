"""Transport security of the master's gRPC ports.

Two ports, both TLS: the *public* port (hospitals; TLS authenticates the server, the hospital
authenticates with its API token) and the *internal* port (agents and operators; TLS requires and
verifies a client certificate signed by the grid's CA). gRPC's Python API can either require a
client certificate or not ask for one at all, hence one port per kind of caller.

Plaintext exists only when asked for (``--insecure``) and only on a loopback address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the master: its certificate chain, its private key and the CA that signs clients."""

    cert: Path
    key: Path
    ca: Path

    def _read(self) -> tuple[bytes, bytes, bytes]:
        missing = [str(p) for p in (self.cert, self.key, self.ca) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"TLS file(s) not found: {', '.join(missing)} (make them with `rtgrid certs`)")
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()

    def server_credentials(self, require_client_cert: bool) -> grpc.ServerCredentials:
        """Credentials of a port; ``require_client_cert`` makes it mutual TLS against the CA."""
        cert, key, ca = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=require_client_cert)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_insecure_host(host: str) -> None:
    """Refuse plaintext on anything but loopback.

    Raises
    ------
    ValueError
        When ``host`` is not a loopback address.
    """
    if not is_loopback(host):
        raise ValueError(
            f"--insecure serves plaintext without authentication and is allowed only on a loopback address "
            f"(127.0.0.1, ::1, localhost), not on {host!r}: give --tls-cert, --tls-key and --tls-ca instead "
            "(make them with `rtgrid certs`)"
        )

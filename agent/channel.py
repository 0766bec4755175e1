"""How an agent's processes reach the master: mutual TLS with the agent's certificate, or
plaintext to a master started with ``--insecure``. Picklable, so Ray actors on the agent's node
(the model actors, which fetch packages) connect the way the daemon does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class MasterLink:
    """The master's internal (agent) address and the agent's PEM files (none: plaintext)."""

    target: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def channel(self) -> grpc.Channel:
        """A new channel to the master (the caller closes it)."""
        if self.cert is None:
            return grpc.insecure_channel(self.target)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes(),
        )
        return grpc.secure_channel(self.target, credentials)

"""How the agent verifies the server, and its mirrors, over HTTPS.

Every connection the agent makes (TUF metadata and bundles through
``agent.fetcher``, enrollment, reports and challenges through
``agent.identity``) goes through the pool built here. With agent.toml's
``server_ca``, certificates must chain to the CA certificates in that file and
to nothing else: the system's CAs do not vouch for this fleet's server. Without
it, the system's CA certificates do (a server with a public certificate).

TLS does not make anything the agent installs trustworthy (TUF does that); it
keeps what a node reports, and which bundle it is told to run, between the
node and its server. The operator's commands verify the server the same way,
against their ``--ca-file``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import urllib3

from fleet.errors import GpuwardError
from node.config import AgentConfig


@dataclass(frozen=True)
class ServerTrust:
    """What the server's certificate is checked against: a CA file, or the system's.
    ``setting`` is where the CA file is given, for the errors to name."""

    ca_file: Path | None
    setting: str = "server_ca"

    @classmethod
    def of(cls, config: AgentConfig) -> ServerTrust:
        return cls(config.server_ca)

    def pool(self) -> urllib3.PoolManager:
        """A connection pool verifying HTTPS against this trust."""
        if self.ca_file is None:
            return urllib3.PoolManager()
        return urllib3.PoolManager(ssl_context=self._context(self.ca_file))

    def _context(self, ca_file: Path) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=str(ca_file))
        except FileNotFoundError:
            raise GpuwardError(
                f"{self.setting} {ca_file} not found: put there the certificate (PEM) of the "
                "CA that signed the server's"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raise GpuwardError(
                f"{self.setting} {ca_file} holds no usable CA certificate ({exc}): give a PEM file"
            ) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def refused(self, exc: urllib3.exceptions.SSLError) -> str:
        """Why TLS failed, naming what an operator checks: the CA file the agent used."""
        against = (
            f"{self.setting} {self.ca_file}"
            if self.ca_file is not None
            else f"the system's CA certificates (give {self.setting} the certificate of the "
            "CA that signed the server's)"
        )
        reason = exc.args[0] if exc.args else exc
        return f"TLS refused ({reason}); the server's certificate was checked against {against}"

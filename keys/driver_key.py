"""The applier's measurement key: proof that a driver measurement is the applier's.

PCR 15 has no authorization and the unprivileged agent reaches the TPM, so the
PCR alone cannot tell the applier's extends from the agent's. The applier signs
every event it measures (``fleet.driverlog``) with this Ed25519 key, kept in
its root-only folder; the server pins the public half per node and checks each
event's signature. Whoever reads this file can measure as the applier.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.errors import GpuwardError
from keys.durable_files import atomic_write, read_bounded

SEED_BYTES = 32


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The key at ``path`` (a raw seed, mode 0600); made if there is none yet."""
    if not path.exists():
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        atomic_write(path, seed, mode=0o600)
    seed = read_bounded(path, SEED_BYTES, "applier measurement key")
    if len(seed) != SEED_BYTES:
        raise GpuwardError(
            f"{path}: not an applier measurement key ({len(seed)} bytes, not {SEED_BYTES}); "
            "remove it, reboot, and re-enroll the node so the server pins the new key"
        )
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

"""A TPM vouches for one node: its EK is bound to one enrollment in the store, on
SQLite and PostgreSQL, with the unique indexes as the guard (two replicas enrolling
one EK for two ids at once: one wins), until an admin removes the node."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from server.attestation.enrollment import EnrolledTpm
from server.store import EkInUse, EnrolledNode, Store, open_store
from tests.store.old_schema import old_database
from tests.store.test_store import run


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def tpm_node(
    node_id: str, ek: str = "tpm-a", *, public: str | None = None, key: bytes = b"k" * 32
) -> EnrolledNode:
    """A node enrolled with the TPM ``ek`` (its certificate's and its key's digest
    made from the name; ``public`` names another key than the certificate's)."""
    record = EnrolledTpm(
        node_id, b"AK", digest(ek), 1_000, None, None, digest(public or ek + "-key")
    )
    return EnrolledNode(node_id, key, "prod", True, "tpm2", 1_000, json.dumps(record.to_dict()))


def test_a_second_node_id_with_a_bound_ek_is_refused_naming_the_holder(db_url: str) -> None:
    async def body(store: Store) -> None:
        assert (await store.enroll(tpm_node("gpu-099")))[1]
        for impostor in ("gpu-017", "gpu-018"):
            with pytest.raises(EkInUse) as refused:
                await store.enroll(tpm_node(impostor))
            assert refused.value.holder == "gpu-099"
            assert "bound to node gpu-099" in str(refused.value)
            assert "gpuward nodes remove gpu-099" in str(refused.value)
            assert await store.enrolled(impostor) is None
        # The same certificate presented with another key, or the same key with
        # another certificate: either digest is bound.
        with pytest.raises(EkInUse):
            await store.enroll(tpm_node("gpu-017", "tpm-a", public="other-key"))
        with pytest.raises(EkInUse):
            await store.enroll(tpm_node("gpu-017", "another-cert", public="tpm-a-key"))
        assert await store.ek_holder(digest("tpm-a"), digest("x")) == "gpu-099"
        assert await store.ek_holder(digest("x"), digest("tpm-a-key")) == "gpu-099"
        assert await store.ek_holder(digest("x"), digest("y")) is None
        # The holder enrolling again with its own TPM is no conflict; another TPM is.
        assert await store.enroll(tpm_node("gpu-099")) == (tpm_node("gpu-099"), False)
        assert (await store.enroll(tpm_node("gpu-017", "tpm-b")))[1]
        # Nodes without a TPM bind nothing.
        unattested = EnrolledNode("lab-1", b"u" * 32, "lab", False, "unattested", 1_000)
        assert (await store.enroll(unattested))[1]
        assert (await store.enroll(EnrolledNode("lab-2", b"v" * 32, "lab", False, "u", 1)))[1]

    run(db_url, body)


def test_removing_the_holder_frees_its_ek_and_says_which(db_url: str) -> None:
    async def body(store: Store) -> None:
        await store.enroll(tpm_node("gpu-099"))
        removed = await store.remove_node("gpu-099")
        assert removed is not None and removed.ek_certificate_sha256 == digest("tpm-a")
        assert await store.ek_holder(digest("tpm-a"), digest("tpm-a-key")) is None
        assert (await store.enroll(tpm_node("gpu-018")))[1]

    run(db_url, body)


def test_two_replicas_enrolling_one_ek_for_two_ids_at_once_one_wins(db_url: str) -> None:
    async def main() -> None:
        stores = [await open_store(db_url) for _ in range(2)]
        try:
            for round_ in range(5):  # several races, each with its own TPM
                ek = f"tpm-{round_}"
                ids = (f"gpu-{round_}-a", f"gpu-{round_}-b")
                outcomes = await asyncio.gather(
                    *(s.enroll(tpm_node(i, ek)) for s, i in zip(stores, ids, strict=True)),
                    return_exceptions=True,
                )
                won = [o for o in outcomes if isinstance(o, tuple)]
                lost = [o for o in outcomes if isinstance(o, EkInUse)]
                assert (len(won), len(lost)) == (1, 1), outcomes
                winner = won[0][0].node_id
                assert lost[0].holder == winner
                enrolled = [await stores[0].enrolled(i) for i in ids]
                assert [n.node_id for n in enrolled if n is not None] == [winner]
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())


def test_nodes_enrolled_before_bindings_keep_the_earliest_bound(db_url: str) -> None:
    """The attack, as an older server stored it: one TPM enrolled three ids. After
    the migration the first enrolled holds the EK; the others are listed (the
    server warns of them at start) and the TPM enrolls no further id."""
    rows = []
    for i, node_id in enumerate(("gpu-017", "gpu-018", "gpu-099")):
        record = EnrolledTpm(node_id, b"AK", digest("tpm-a"), 1_000 + i)
        rows.append(
            (node_id, b"k" * 32, "prod", True, "tpm2", 1_000 + i, json.dumps(record.to_dict()))
        )
    other = EnrolledTpm("gpu-020", b"AK", digest("tpm-b"), 1_000)
    rows.append(("gpu-020", b"l" * 32, "prod", True, "tpm2", 5, json.dumps(other.to_dict())))
    insert = (
        "INSERT INTO enrollments (node_id, public_key, pool, attested, attestation, "
        "enrolled_at, tpm) VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    asyncio.run(old_database(db_url, "ek_certificate_sha256", insert, rows))

    async def body(store: Store) -> None:
        assert await store.unbound_tpm_nodes() == ["gpu-018", "gpu-099"]
        assert await store.ek_holder(digest("tpm-a"), digest("unknown")) == "gpu-017"
        assert await store.ek_holder(digest("tpm-b"), digest("unknown")) == "gpu-020"
        with pytest.raises(EkInUse, match="bound to node gpu-017"):
            await store.enroll(tpm_node("gpu-030", "tpm-a"))
        await store.remove_node("gpu-018")
        assert await store.unbound_tpm_nodes() == ["gpu-099"]

    run(db_url, body)

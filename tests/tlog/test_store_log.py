"""The log in the fleet store, on SQLite and PostgreSQL: appends from concurrent
writers make one tree, its stored hashes answer proofs that verify, and an
entry changed in the database (an UPDATE of its row) is caught by ``gpuward log
verify``, against the export's own checkpoint and against one saved before."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fleet import merkle
from fleet.schema import canonical_json
from fleet.tlog import EntryKind, LogEntry
from fleet.webhook import WebhookEvent
from keys import tlog_key
from server.store import Store, open_store
from server.tlog import TransparencyLog
from tests.cli.test_errors import assert_one_line_error
from tests.store.test_remediation_store import held
from tests.store.test_store import run


def entry(i: int) -> LogEntry:
    return LogEntry(EntryKind.BUNDLE, 1_000 + i, f"nvidia-535/{i}.tar", f"{i:064x}")


@pytest.fixture
def signer(tmp_path: Path) -> tlog_key.NoteSigner:
    return tlog_key.load_or_create(tmp_path / "keys" / "tlog.key")


def test_concurrent_appends_make_one_tree_whose_proofs_verify(
    db_url: str, signer: tlog_key.NoteSigner
) -> None:
    async def body(store: Store) -> None:
        tlog = TransparencyLog(store, signer)
        await asyncio.gather(*(tlog.append([entry(i), entry(100 + i)]) for i in range(12)))
        size, note = await tlog.checkpoint()
        checkpoint = signer.verifier.verify(note)
        assert size == checkpoint.size == 24
        docs = await store.log_entries(0, size)
        tree = merkle.Tree()
        for doc in docs:
            tree.append(merkle.leaf_hash(doc.encode()))
        assert tree.root() == checkpoint.root
        for index in (0, 7, 23):
            proof = await tlog.inclusion(index)
            merkle.verify_inclusion(
                tree.subtree((0, index)), index, size, proof.hashes, checkpoint.root
            )
            assert await store.log_index(proof.leaf_hash) == index
        for old in (1, 5, 16, 24):
            consistency = await tlog.consistency(old, size)
            merkle.verify_consistency(
                old, size, await tlog.root(old), checkpoint.root, consistency.hashes
            )

    run(db_url, body)


def gpuward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuward", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def _tamper(db_url: str, sql: str) -> None:
    """Change a row behind the server's back, as someone with the database could."""

    async def main_() -> None:
        store = await open_store(db_url)
        try:
            async with store.db.transaction(write=True) as tx:  # type: ignore[attr-defined]
                await tx.execute(sql)
        finally:
            await store.close()

    asyncio.run(main_())


def _export(db_url: str, signer: tlog_key.NoteSigner, path: Path) -> str:
    async def body(store: Store) -> str:
        export = await TransparencyLog(store, signer).export()
        path.write_text(json.dumps(export.to_dict()))
        return export.checkpoint

    return run(db_url, body)


@pytest.mark.parametrize(
    "change",
    [
        # An entry's document rewritten (its leaf hash left).
        "UPDATE tlog_entries SET doc = replace(doc, 'nvidia-535/3.tar', 'nvidia-535/X.tar') "
        "WHERE idx = 3",
        # An entry rewritten with its leaf and every hash above it: only an earlier
        # checkpoint shows it.
        "REWRITE",
    ],
)
def test_an_entry_changed_in_the_database_is_detected(
    db_url: str,
    signer: tlog_key.NoteSigner,
    tmp_path: Path,
    change: str,
) -> None:
    async def fill(store: Store) -> None:
        await TransparencyLog(store, signer).append([entry(i) for i in range(10)])

    run(db_url, fill)
    vkey = tmp_path / "keys" / "tlog.vkey"
    before = _export(db_url, signer, tmp_path / "before.json")
    (tmp_path / "before.note").write_text(before)
    assert (
        gpuward("log", "verify", str(tmp_path / "before.json"), "--key", str(vkey)).returncode == 0
    )

    if change == "REWRITE":
        forged = [
            entry(i) if i != 3 else LogEntry(EntryKind.BUNDLE, 1, "evil.tar") for i in range(10)
        ]
        tree = merkle.Tree()
        for e in forged:
            tree.append(e.leaf_hash)
        _tamper(db_url, "DELETE FROM tlog_subtrees")
        _tamper(db_url, "DELETE FROM tlog_entries WHERE idx = 3")
        values = ", ".join(
            f"({level}, {index}, {_blob(db_url, tree.subtree((level, index)))})"
            for level, hashes in enumerate(tree.levels)
            for index in range(len(hashes))
        )
        _tamper(db_url, f"INSERT INTO tlog_subtrees (level, idx, hash) VALUES {values}")
        doc = forged[3].data.decode()
        _tamper(
            db_url,
            "INSERT INTO tlog_entries (idx, at, kind, leaf_hash, doc) VALUES "
            f"(3, 1, 'bundle', {_blob(db_url, forged[3].leaf_hash)}, '{doc}')",
        )
    else:
        _tamper(db_url, change)

    _export(db_url, signer, tmp_path / "after.json")
    args = ["log", "verify", str(tmp_path / "after.json"), "--key", str(vkey)]
    if change == "REWRITE":
        # The forger re-signed with the online key: the tree is self-consistent,
        # but not an extension of what was seen before.
        assert gpuward(*args).returncode == 0
        refused = gpuward(*args, "--against", str(tmp_path / "before.note"))
        assert refused.returncode != 0 and "does not extend" in refused.stderr
    else:
        refused = gpuward(*args)
        assert refused.returncode != 0
        assert "do not make the tree the checkpoint signs" in refused.stderr


def _blob(db_url: str, data: bytes) -> str:
    return f"X'{data.hex()}'" if db_url.startswith("sqlite") else f"'\\x{data.hex()}'::bytea"


def test_remediation_actions_are_logged_with_their_audit_entries(db_url: str) -> None:
    async def body(store: Store) -> None:
        await store.change_remediation("prod", held("n1", 7), 7, notify=False)
        (audit,) = await store.remediation_audit(None, 10)
        (doc,) = await store.log_entries(0, 10)
        logged = LogEntry.from_dict(json.loads(doc))
        assert (logged.kind, logged.subject, logged.at) == (EntryKind.REMEDIATION, "n1", 7)
        event, action = audit.event.value, audit.action.value
        assert logged.detail == {"pool": "prod", "event": event, "action": action, "by": "gpuward"}
        assert logged.sha256 == hashlib.sha256(canonical_json(audit.to_dict())).hexdigest()

    run(db_url, body)


def test_what_is_seen_on_every_pass_is_logged_once(db_url: str) -> None:
    async def body(store: Store) -> None:
        seen = [entry(1), entry(2), entry(1)]
        assert [i for i, _ in await store.append_log(seen, once=True)] == [0, 1]
        again = [replace(entry(2), at=5_000), entry(3)]
        appended = await store.append_log(again, once=True)
        assert [(i, e.subject) for i, e in appended] == [(2, "nvidia-535/3.tar")]
        assert await store.log_once(entry(2).once_key) == 1
        assert await store.log_size() == 3

    run(db_url, body)


def test_a_node_checkpoint_the_log_does_not_extend_is_flagged_once(
    db_url: str, signer: tlog_key.NoteSigner, tmp_path: Path
) -> None:
    async def body(store: Store) -> None:
        tlog = TransparencyLog(store, signer)
        await tlog.append([entry(i) for i in range(5)])
        _, ours = await tlog.checkpoint(3)
        forked = signer.checkpoint(3, merkle.leaf_hash(b"another tree"))
        ahead = signer.checkpoint(9, await tlog.root(5))
        other = tlog_key.load_or_create(tmp_path / "other.key")
        for _ in range(2):  # the second time from what the first learnt
            assert await tlog.check_node_checkpoint("n1", ours, 10)
            assert not await tlog.check_node_checkpoint("n1", forked, 10)
        assert not await tlog.check_node_checkpoint("n2", ahead, 11)
        assert not await tlog.check_node_checkpoint("n3", other.checkpoint(1, bytes(32)), 12)
        flagged = [LogEntry.from_dict(json.loads(d)) for d in await store.log_entries(5, 10)]
        assert [(e.kind, e.subject) for e in flagged] == [
            (EntryKind.SPLIT_VIEW, "n1"),
            (EntryKind.SPLIT_VIEW, "n2"),
        ]

    run(db_url, body)


@pytest.mark.parametrize("notify", [True, False])
def test_a_split_view_is_one_webhook_event_when_webhooks_are_set(
    db_url: str, signer: tlog_key.NoteSigner, notify: bool
) -> None:
    async def body(store: Store) -> None:
        tlog = TransparencyLog(store, signer, notify=notify)
        await tlog.append([entry(0), entry(1)])
        # What a holder of the stolen checkpoint key showed node-1: another tree.
        forged = signer.checkpoint(5, bytes(range(32)))
        for at in (2_000, 2_060):  # the node reports it twice: flagged once
            assert not await tlog.check_node_checkpoint("node-1", forged, at)
        assert await tlog.check_node_checkpoint("node-2", (await tlog.checkpoint())[1], 2_070)
        routed = await store.route_webhook_events(lambda _type: ["hooks"], 2_100, 100)
        deliveries = await store.claim_webhook_deliveries(["hooks"], 2_100, 2_200, 100)
        if not notify:
            assert (routed, deliveries) == (0, [])
            return
        assert routed == 1
        [delivery] = deliveries
        event = WebhookEvent.from_dict(json.loads(delivery.body))
        assert (event.type, event.subject, event.time) == ("log.split_view", "node/node-1", 2_000)
        assert event.details["size"] == "5"
        assert event.details["root"] == bytes(range(32)).hex()
        assert event.details["log_index"] == 2
        assert event.details["checkpoint_sha256"] == hashlib.sha256(forged.encode()).hexdigest()

    run(db_url, body)


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (None, ("inclusion proof", "not found")),
        (b"{not json", ("proof.json: not JSON",)),
        (b" " * (64 * 1024 + 1), ("proof.json: inclusion proof larger than 65536 bytes",)),
        (b'{"index": "one"}', ("proof.json: ",)),
    ],
    ids=["missing", "not-json", "oversized", "not-a-proof"],
)
def test_a_hostile_proof_file_is_one_clear_error(
    signer: tlog_key.NoteSigner, tmp_path: Path, content: bytes | None, needles: tuple[str, ...]
) -> None:
    vkey = tmp_path / "keys" / "tlog.vkey"
    assert vkey.exists()  # written beside the signer's key
    (tmp_path / "entry.json").write_bytes(entry(0).data)
    proof = tmp_path / "proof.json"
    if content is not None:
        proof.write_bytes(content)
    refused = gpuward("log", "inclusion", str(tmp_path / "entry.json"), str(proof),
                      "--key", str(vkey))  # fmt: skip
    assert_one_line_error(refused, *needles)

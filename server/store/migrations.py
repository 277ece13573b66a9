"""The fleet store's schema: each migration written once, for SQLite and PostgreSQL.

Migration ``n`` (numbered from 1) is ``MIGRATIONS[n - 1]``. SQLite records the
version in ``PRAGMA user_version``, PostgreSQL in ``schema_migrations``; both
count the same list, so a database keeps its version across releases. Never edit
or reorder a migration a release has shipped: databases in the field have
applied it. Change the schema by appending one.

The databases spell a few things differently (integer widths, booleans, bytes,
row ids, randomness, reading JSON). A migration names them by placeholder,
``{integer}`` or ``{json_text(column, key)}``, and a ``Dialect`` spells them for
its database: each as that database's migrations always did, so a database made
by an older release has the schema one made now has (tests/store/test_migrations.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

# ``{word}``, or ``{function(arg, arg)}``.
_PLACEHOLDER = re.compile(r"\{(?P<name>\w+)(?:\((?P<args>[^)]*)\))?\}")


@dataclass(frozen=True)
class Dialect:
    """How one database spells each placeholder of a migration (or of a query)."""

    # A row id the database assigns, counting up.
    row_id: str
    # Timestamps in seconds, and counts.
    integer: str
    boolean: str
    false: str
    blob: str
    # Challenge expiry, in fractional seconds.
    real: str
    # 12 random lowercase hex digits, drawn anew for each row.
    random_hex12: str
    # ``{json_text(column, key)}``: the member ``key`` of the JSON object in
    # ``column``, as SQL text.
    json_text: str
    # ``{json_rows(column, key)}``: a table function for a query's FROM, one row per
    # element of the JSON array ``key`` of the object in ``column``; alias it, and
    # its ``value`` column is the element (``json_text`` reads its members).
    json_rows: str
    # ``{json_without(column, key)}``: the JSON object in ``column`` without its
    # member ``key``, as SQL text.
    json_without: str

    def render(self, migration: str) -> str:
        """A migration, or a query (``server.store.sql``), as this database reads it."""
        return _PLACEHOLDER.sub(self._spell, migration)

    def _spell(self, placeholder: re.Match[str]) -> str:
        name, args = placeholder["name"], placeholder["args"]
        if name in _FUNCTIONS and args is not None:
            column, key = (arg.strip() for arg in args.split(","))
            return str(getattr(self, name)).format(column=column, key=key)
        if name in _WORDS and args is None:
            return str(getattr(self, name))
        raise ValueError(
            f"migration placeholder {placeholder[0]} is none of {sorted(_WORDS)} or "
            f"{', '.join(f'{{{f}(column, key)}}' for f in sorted(_FUNCTIONS))}: spell it in "
            "both dialects in server.store.migrations"
        )

    def migrations(self) -> tuple[str, ...]:
        """Every migration, in order, as this database reads it."""
        return tuple(self.render(migration) for migration in MIGRATIONS)


_FUNCTIONS = frozenset({"json_text", "json_rows", "json_without"})
_WORDS = frozenset(field.name for field in fields(Dialect)) - _FUNCTIONS

SQLITE = Dialect(
    row_id="INTEGER PRIMARY KEY",
    integer="INTEGER",
    boolean="INTEGER",
    false="0",
    blob="BLOB",
    real="REAL",
    random_hex12="lower(hex(randomblob(6)))",
    json_text="json_extract({column}, '$.{key}')",
    json_rows="json_each({column}, '$.{key}')",
    json_without="json_remove({column}, '$.{key}')",
)

POSTGRES = Dialect(
    row_id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    integer="BIGINT",
    boolean="BOOLEAN",
    false="FALSE",
    blob="BYTEA",
    real="DOUBLE PRECISION",
    # Seeded with the row's own key, so each row draws its own value.
    random_hex12="substr(md5(random()::text || token_hash), 1, 12)",
    json_text="({column}::jsonb ->> '{key}')",
    json_rows="jsonb_array_elements({column}::jsonb -> '{key}')",
    json_without="({column}::jsonb - '{key}')::text",
)

MIGRATIONS = (
    """
    CREATE TABLE reports (
        id {row_id},
        node_id TEXT NOT NULL,
        received_at {integer} NOT NULL,
        remote TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX reports_node ON reports (node_id, id);
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        last_report {integer} NOT NULL REFERENCES reports (id),
        last_seen {integer} NOT NULL
    );
    """,
    """
    ALTER TABLE reports ADD COLUMN nonce TEXT;
    CREATE UNIQUE INDEX reports_nonce ON reports (node_id, nonce);
    ALTER TABLE nodes ADD COLUMN bundle TEXT;
    ALTER TABLE nodes ADD COLUMN driver_version TEXT;
    ALTER TABLE nodes ADD COLUMN update_outcome TEXT;
    ALTER TABLE nodes ADD COLUMN healthy {boolean} NOT NULL DEFAULT {false};
    CREATE TABLE enrollments (
        node_id TEXT PRIMARY KEY,
        public_key {blob} NOT NULL,
        pool TEXT NOT NULL,
        attested {boolean} NOT NULL,
        attestation TEXT NOT NULL,
        enrolled_at {integer} NOT NULL
    );
    CREATE INDEX enrollments_pool ON enrollments (pool, node_id);
    CREATE TABLE operator_tokens (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at {integer} NOT NULL
    );
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        pool TEXT NOT NULL,
        phase TEXT NOT NULL,
        doc TEXT NOT NULL,
        created_at {integer} NOT NULL,
        updated_at {integer} NOT NULL
    );
    CREATE INDEX rollouts_pool ON rollouts (pool, phase);
    CREATE TABLE assignments (
        node_id TEXT PRIMARY KEY,
        target TEXT NOT NULL,
        rollout_id TEXT NOT NULL,
        assigned_at {integer} NOT NULL
    );
    CREATE TABLE rollout_events (
        id {row_id},
        rollout_id TEXT NOT NULL,
        at {integer} NOT NULL,
        event TEXT NOT NULL
    );
    CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, id);
    """,
    # The enrolled TPM attestation key (server.attestation.enrollment.EnrolledTpm JSON);
    # NULL for nodes enrolled without a TPM.
    """
    ALTER TABLE enrollments ADD COLUMN tpm TEXT;
    """,
    # The verdict on an attested report (fleet.attestation_verdict.AttestationVerdict
    # JSON); NULL for a report sent without TPM evidence.
    """
    ALTER TABLE reports ADD COLUMN attestation TEXT;
    """,
    # Attestation state every replica must see: pending challenges (single-use,
    # expiring; server.attestation.challenges) and each node's last verified
    # event log, so its reports may name it by digest at any replica.
    """
    CREATE TABLE challenges (
        nonce {blob} PRIMARY KEY,
        subject TEXT NOT NULL,
        purpose TEXT NOT NULL,
        payload {blob} NOT NULL,
        expires_at {real} NOT NULL
    );
    CREATE INDEX challenges_expiry ON challenges (expires_at);
    CREATE INDEX challenges_purpose ON challenges (purpose);
    CREATE TABLE event_logs (
        node_id TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        log {blob} NOT NULL
    );
    """,
    # Each node's latest GPU health samples (a JSON list per report), the window
    # straggler detection compares across the fleet.
    """
    CREATE TABLE gpu_samples (
        id {row_id},
        node_id TEXT NOT NULL,
        received_at {integer} NOT NULL,
        samples TEXT NOT NULL
    );
    CREATE INDEX gpu_samples_node ON gpu_samples (node_id, id);
    """,
    # Nodes that boot alike share one event log (~41 KB): keep each distinct log
    # once, keyed by its digest, and only the digest per node.
    """
    CREATE TABLE event_log_texts (
        sha256 TEXT PRIMARY KEY,
        log {blob} NOT NULL
    );
    INSERT INTO event_log_texts (sha256, log) SELECT sha256, log FROM event_logs WHERE TRUE
        ON CONFLICT (sha256) DO NOTHING;
    ALTER TABLE event_logs DROP COLUMN log;
    CREATE INDEX event_logs_sha256 ON event_logs (sha256);
    """,
    # Each node's applier measurement key (keys.driver_key), pinned by its first
    # attested report that names one; removed with the node, so re-enrolling re-pins.
    """
    CREATE TABLE driver_keys (
        node_id TEXT PRIMARY KEY,
        public_key {blob} NOT NULL
    );
    """,
    # The pinned applier key moves into the enrollment row, which every signed
    # request reads anyway: an attested report then needs no query to check it.
    """
    ALTER TABLE enrollments ADD COLUMN driver_key {blob};
    UPDATE enrollments SET driver_key = (
        SELECT k.public_key FROM driver_keys k WHERE k.node_id = enrollments.node_id
    );
    DROP TABLE driver_keys;
    """,
    # Report challenges are held one per node (issue_replacing), replaced in place.
    """
    CREATE TABLE sole_challenges (
        subject TEXT NOT NULL,
        purpose TEXT NOT NULL,
        nonce {blob} NOT NULL,
        payload {blob} NOT NULL,
        expires_at {real} NOT NULL,
        PRIMARY KEY (subject, purpose)
    );
    """,
    # Each re-signer's last outcome (server.renewal), one row per host and repository.
    """
    CREATE TABLE renewals (
        signer TEXT PRIMARY KEY,
        status TEXT NOT NULL
    );
    """,
    # Operator tokens expire and can be revoked; each has a short id to name it by
    # (its hash is never shown). Dashboard sessions are random ids, stored hashed,
    # tied to the token that opened them and removed when it is revoked.
    """
    ALTER TABLE operator_tokens ADD COLUMN token_id TEXT;
    ALTER TABLE operator_tokens ADD COLUMN expires_at {integer};
    ALTER TABLE operator_tokens ADD COLUMN revoked_at {integer};
    ALTER TABLE operator_tokens ADD COLUMN last_used_at {integer};
    UPDATE operator_tokens SET token_id = {random_hex12};
    CREATE UNIQUE INDEX operator_tokens_id ON operator_tokens (token_id);
    CREATE TABLE operator_sessions (
        session_hash TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL,
        expires_at {integer} NOT NULL
    );
    CREATE INDEX operator_sessions_token ON operator_sessions (token_hash);
    """,
    # A TPM vouches for one node: its EK (by certificate and by public key) is
    # bound to one enrollment, and the unique indexes are the guard, so two
    # replicas enrolling one EK for two ids cannot both win. Nodes enrolled before
    # keep their certificate's binding, the earliest enrolled of each EK only: a
    # later one sharing it is left unbound, and the server warns of it at start.
    """
    ALTER TABLE enrollments ADD COLUMN ek_certificate_sha256 TEXT;
    ALTER TABLE enrollments ADD COLUMN ek_public_sha256 TEXT;
    UPDATE enrollments SET ek_certificate_sha256 = {json_text(tpm, ek_certificate_sha256)}
        WHERE tpm IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM enrollments o WHERE o.tpm IS NOT NULL
                AND {json_text(o.tpm, ek_certificate_sha256)}
                    = {json_text(enrollments.tpm, ek_certificate_sha256)}
                AND (o.enrolled_at, o.node_id) < (enrollments.enrolled_at, enrollments.node_id)
        );
    CREATE UNIQUE INDEX enrollments_ek_certificate ON enrollments (ek_certificate_sha256);
    CREATE UNIQUE INDEX enrollments_ek_public ON enrollments (ek_public_sha256);
    """,
    # Retention (server.store.Retention): how many reports each node has stored,
    # kept with its latest, so trimming a node needs no count of its reports.
    # What removed nodes left behind goes: reports and samples of ids no longer
    # enrolled, and those received (with a clock margin) before the id's present
    # enrollment, which a node enrolling a removed node's id had inherited.
    """
    ALTER TABLE nodes ADD COLUMN reports_kept {integer} NOT NULL DEFAULT 0;
    DELETE FROM nodes WHERE NOT EXISTS (
        SELECT 1 FROM enrollments e WHERE e.node_id = nodes.node_id
            AND nodes.last_seen >= e.enrolled_at - 300
    );
    DELETE FROM reports WHERE NOT EXISTS (
        SELECT 1 FROM enrollments e WHERE e.node_id = reports.node_id
            AND reports.received_at >= e.enrolled_at - 300
    );
    DELETE FROM gpu_samples WHERE NOT EXISTS (
        SELECT 1 FROM enrollments e WHERE e.node_id = gpu_samples.node_id
            AND gpu_samples.received_at >= e.enrolled_at - 300
    );
    UPDATE nodes SET reports_kept = (
        SELECT COUNT(*) FROM reports r WHERE r.node_id = nodes.node_id
    );
    """,
    # Webhooks (server.webhooks): each operational event once, with the body every
    # delivery of it sends, routed to the endpoints configured when it is; a
    # delivery per event and endpoint, retried until delivered or out of attempts;
    # and the conditions watched (a node missing ...), each open while it holds,
    # so that it is told once when it begins and once when it ends.
    """
    CREATE TABLE webhook_events (
        event_id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        created_at {integer} NOT NULL,
        body TEXT NOT NULL,
        routed {boolean} NOT NULL DEFAULT {false}
    );
    CREATE INDEX webhook_events_unrouted ON webhook_events (routed, created_at);
    CREATE INDEX webhook_events_created ON webhook_events (created_at);
    CREATE TABLE webhook_deliveries (
        event_id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts {integer} NOT NULL,
        next_attempt_at {integer} NOT NULL,
        last_error TEXT NOT NULL,
        PRIMARY KEY (event_id, endpoint)
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
    CREATE TABLE webhook_conditions (
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        episode TEXT NOT NULL,
        since {integer} NOT NULL,
        PRIMARY KEY (kind, subject)
    );
    """,
    # The dashboard lists, filters and pages through 100,000 nodes by their id
    # (server.dashboard): each node's latest attestation verdict is kept with its
    # latest report (NULL: not attested; SQLite's JSON reads true as 1), and the
    # filters on how nodes enrolled and which driver they run read an index in id
    # order, so a page costs its rows, not a scan of the fleet.
    """
    ALTER TABLE nodes ADD COLUMN report_attested {boolean};
    UPDATE nodes SET report_attested = (
        SELECT CAST({json_text(r.attestation, passed)} AS TEXT) IN ('1', 'true')
        FROM reports r WHERE r.id = nodes.last_report AND r.attestation IS NOT NULL
    );
    CREATE INDEX enrollments_attestation ON enrollments (attestation, node_id);
    CREATE INDEX nodes_driver ON nodes (driver_version, node_id);
    """,
    # Remediation (server.remediation): each pool's board (fleet.remediation's
    # RemediationBoard, one JSON document changed under its row lock, like a
    # rollout), and the audit log of every decision and outcome, never trimmed.
    """
    CREATE TABLE remediation_boards (
        pool TEXT PRIMARY KEY,
        doc TEXT NOT NULL,
        updated_at {integer} NOT NULL
    );
    CREATE TABLE remediation_audit (
        id {row_id},
        at {integer} NOT NULL,
        pool TEXT NOT NULL,
        node_id TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX remediation_audit_node ON remediation_audit (node_id, id);
    """,
    # How many audit entries each pool has of each event and action, kept with the
    # audit log in its transactions: the metrics' counter of remediation events
    # (server.metrics) reads a few rows per pool, not a log that is never trimmed.
    """
    CREATE TABLE remediation_counts (
        pool TEXT NOT NULL,
        event TEXT NOT NULL,
        action TEXT NOT NULL,
        entries {integer} NOT NULL,
        PRIMARY KEY (pool, event, action)
    );
    INSERT INTO remediation_counts (pool, event, action, entries)
        SELECT pool, {json_text(doc, event)}, {json_text(doc, action)}, COUNT(*)
        FROM remediation_audit GROUP BY 1, 2, 3;
    """,
    # The transparency log (server.tlog): each entry's exact bytes and leaf hash
    # (and, for what is logged once however often it is seen, its once_key),
    # the hash of every perfect subtree (written once, as it completes, so a proof
    # reads a few dozen rows), and the tree's size in one row that appends lock.
    """
    CREATE TABLE tlog_entries (
        idx {integer} PRIMARY KEY,
        at {integer} NOT NULL,
        kind TEXT NOT NULL,
        leaf_hash {blob} NOT NULL,
        doc TEXT NOT NULL,
        once_key TEXT
    );
    CREATE INDEX tlog_entries_leaf ON tlog_entries (leaf_hash);
    CREATE UNIQUE INDEX tlog_entries_once ON tlog_entries (once_key);
    CREATE TABLE tlog_subtrees (
        level {integer} NOT NULL,
        idx {integer} NOT NULL,
        hash {blob} NOT NULL,
        PRIMARY KEY (level, idx)
    );
    CREATE TABLE tlog_head (
        id {integer} PRIMARY KEY,
        size {integer} NOT NULL
    );
    INSERT INTO tlog_head (id, size) VALUES (1, 0);
    """,
    # Compliance reports (server.reports) read, besides each node's latest report,
    # only its updates and its newest attested report: each report's update outcome
    # is a column, a partial index finds a node's updates without its routine
    # reports, and each node names its newest attested report (by id, the order
    # history reads in; it may name one trimmed since, as trimming goes oldest first).
    # Reports made on a schedule or on request are kept, each file signed and
    # stored compressed in chunks; a slot is claimed by the one replica that makes
    # a scheduled report.
    """
    ALTER TABLE reports ADD COLUMN update_outcome TEXT;
    UPDATE reports SET update_outcome = {json_text(body, update)};
    CREATE INDEX reports_updates ON reports (node_id, id) WHERE update_outcome <> 'up-to-date';
    ALTER TABLE nodes ADD COLUMN last_attested_report {integer};
    UPDATE nodes SET last_attested_report = (
        SELECT MAX(r.id) FROM reports r WHERE r.node_id = nodes.node_id
            AND r.attestation IS NOT NULL
    );
    CREATE TABLE compliance_reports (
        report_id TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        subject TEXT NOT NULL,
        generated_at {integer} NOT NULL,
        made_by TEXT NOT NULL,
        key_id TEXT NOT NULL,
        summary TEXT NOT NULL
    );
    CREATE INDEX compliance_reports_generated ON compliance_reports (generated_at, report_id);
    CREATE INDEX compliance_reports_scope ON compliance_reports (scope, generated_at, report_id);
    CREATE TABLE compliance_report_files (
        report_id TEXT NOT NULL,
        fmt TEXT NOT NULL,
        idx {integer} NOT NULL,
        name TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size {integer} NOT NULL,
        signature {blob} NOT NULL,
        PRIMARY KEY (report_id, fmt)
    );
    CREATE TABLE compliance_report_chunks (
        report_id TEXT NOT NULL,
        fmt TEXT NOT NULL,
        seq {integer} NOT NULL,
        data {blob} NOT NULL,
        PRIMARY KEY (report_id, fmt, seq)
    );
    CREATE TABLE report_slots (
        slot TEXT PRIMARY KEY,
        claimed_at {integer} NOT NULL
    );
    """,
)

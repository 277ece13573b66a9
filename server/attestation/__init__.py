"""Attestation verification on the server: enrollment, quotes, event logs, policy.

No tpm2-pytss here: TPM structures are parsed with ``struct`` (``tpm``), so the
server needs no TPM software stack. How the HTTP API uses it (one process-wide
``Challenges``, ``EnrollmentVerifier`` and ``QuoteVerifier``):

Enrollment, two requests::

    challenges = Challenges(MemoryChallengeStore())      # or a database-backed store
    enrollment = EnrollmentVerifier(EkTrust.load(ca_paths), challenges)
    # POST /v1/attest/enroll     body: EnrollmentRequest.to_dict()
    credential = enrollment.begin(EnrollmentRequest.from_dict(body))
    #   -> 200 credential.to_dict()
    # POST /v1/attest/activate   body: CredentialAnswer.to_dict()
    node = enrollment.finish(CredentialAnswer.from_dict(body))
    #   -> store node.to_dict() under node.node_id (EnrolledNode.from_dict to load)

Reports::

    verifier = QuoteVerifier(challenges, required=PcrSelection.parse("sha256:0-9,14"),
                             policy=BootPolicy.from_dict(json.loads(policy_file)))
    # POST /v1/attest/challenge  body: {"node_id": ...}
    challenge = challenges.issue(node_id, REPORT)          #   -> challenge.to_dict()
    # POST /v1/reports           body: AttestedReport.to_dict()
    attested = AttestedReport.from_dict(body)
    verdict = verifier.verify_report(node, attested, known_log=last_verified_log)
    # verdict.passed; verdict.quote.reset_count (reboots); verdict.policy.reasons.
    # Keep verdict.log.sha256 and the log bytes, so the node may send only the digest.

Session keys (requests signed with Ed25519 instead of one TPM quote each)::

    challenge = challenges.issue(node_id, SESSION_KEY)
    key = verifier.verify_session_key(node, SessionKeyCertification.from_dict(body))
    # keep key (CertifiedSessionKey) for the node; on later requests:
    key.verify(request_bytes, signature)   # raises AttestationError

Every failure raises an ``AttestationError`` (``fleet.attestation``) or an
``EventLogError`` (``fleet.eventlog``), both ``GpuwardError``: answer 4xx with
the message. The evidence carries up to 16 MiB of event log in base64: the
report endpoint needs a larger body limit than plain reports, or the log sent
once by digest (``AttestationEvidence.without_log``).
"""

"""Attestation verification on the server: enrollment, quotes, event logs, policy.

No tpm2-pytss here: TPM structures are parsed with ``struct`` (``tpm``), so the
server needs no TPM software stack. Issuing and redeeming challenges touches
their store (the fleet database, shared by replicas), so those calls are
coroutines. How the HTTP API uses it (``server.tpm_enrollment``,
``server.report_attestation``):

Enrollment, two requests::

    challenges = Challenges(store)                  # any ChallengeStore; the Store is one
    enrollment = TpmEnrollmentVerifier(EkTrust.load(ca_paths), challenges)
    credential = await enrollment.begin(TpmEnrollmentRequest.from_dict(body))
    #   -> credential.to_dict() to the node, which activates it
    node = await enrollment.finish(CredentialAnswer.from_dict(body))
    #   -> store node.to_dict() under node.node_id (EnrolledTpm.from_dict to load)

Reports::

    verifier = QuoteVerifier(challenges, required=PcrSelection.parse("sha256:0-9,14"))
    challenge = await challenges.issue(node_id, REPORT)    #   -> challenge.to_dict()
    attested = AttestedReport.from_dict(body)
    verdict = await verifier.verify_report(node, attested, known_log=last_verified_log,
                                           policy=BootPolicy.from_dict(json.loads(text)))
    # verdict.passed; verdict.quote.reset_count (reboots); verdict.policy.reasons.
    # Keep verdict.log.sha256 and the log bytes, so the node may send only the digest.

Session keys (requests signed with Ed25519 instead of one TPM quote each)::

    challenge = await challenges.issue(node_id, SESSION_KEY)
    key = await verifier.verify_session_key(node, SessionKeyCertification.from_dict(body))
    # keep key (CertifiedSessionKey) for the node; on later requests:
    key.verify(request_bytes, signature)   # raises AttestationError

Every failure raises an ``AttestationError`` (``fleet.attestation``) or an
``EventLogError`` (``fleet.eventlog``), both ``GpuwardError``: answer 4xx with
the message. The evidence carries up to 16 MiB of event log in base64: the
report endpoint needs a larger body limit than plain reports, or the log sent
once by digest (``AttestationEvidence.without_log``).
"""

"""The OpenAPI 3 document, generated from the route table.

Paths, methods, security and responses come from the ``Route`` values the app
registers, so the document lists exactly what the server serves. The component
schemas of wire documents come from their declarations in ``fleet`` (the same
declaration gives the reader and ``to_dict``, ``fleet.wire``); bodies the
handlers build with no reader are described below by hand. The schemathesis
test checks that what this document allows never makes the server fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from fleet.documents import WIRE_DOCUMENTS
from fleet.nodeauth import HEADER_NODE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP
from fleet.rollout import Rollout
from fleet.version import VERSION
from fleet.wire import schemas
from server.http import Route

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NULL_STR = {"type": ["string", "null"]}
_NULL_INT = {"type": ["integer", "null"]}

# Bodies the server builds in its handlers, with no reader in fleet: described here.
_HANDLER_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": _STR}},
    "Accepted": {
        "type": "object",
        "properties": {
            "accepted": {"type": "boolean"},
            "next": {"$ref": "#/components/schemas/ReportChallenge"},
        },
    },
    "Removed": {
        "type": "object",
        "properties": {
            "removed": _STR,
            "reports_deleted": {"type": "integer", "minimum": 0},
            "ek_released": {"type": ["string", "null"]},
        },
    },
    "TpmEnrollmentBegin": {
        "type": "object",
        "description": "activate the credential with the TPM, quote the challenge over the "
        "request key, and send both in POST /v1/enroll as evidence of type tpm2",
        "required": ["credential", "session_key_challenge"],
        "properties": {
            "credential": {"$ref": "#/components/schemas/CredentialChallenge"},
            "session_key_challenge": {"$ref": "#/components/schemas/Challenge"},
        },
    },
    "Enrollment": {
        "type": "object",
        "properties": {
            "node_id": _STR,
            "pool": _STR,
            "attested": {"type": "boolean"},
            "attestation": _STR,
            "enrolled_at": _INT,
        },
    },
    "Assignment": {
        "type": "object",
        "properties": {
            "node_id": _STR,
            "target": _NULL_STR,
            "rollout_id": _NULL_STR,
            "assigned_at": _NULL_INT,
        },
    },
    "Node": {
        "type": "object",
        "properties": {
            "node_id": _STR,
            "pool": _STR,
            "state": {"type": "string", "enum": ["healthy", "unhealthy", "missing", "new"]},
            "attested": {"type": "boolean"},
            "attestation": _STR,
            "enrolled_at": _INT,
            "last_seen": _NULL_INT,
            "assigned": _NULL_STR,
            "report": {"oneOf": [{"$ref": "#/components/schemas/HealthReport"}, {"type": "null"}]},
            "report_attestation": {
                "oneOf": [{"$ref": "#/components/schemas/AttestationVerdict"}, {"type": "null"}],
                "description": "the latest report's TPM verdict; null when it was not attested",
            },
            "withdrawn": {
                "type": "boolean",
                "description": "the node runs a bundle the image repository no longer lists",
            },
            "advisories": {
                "oneOf": [{"$ref": "#/components/schemas/AdvisoryExposure"}, {"type": "null"}],
                "description": "the security advisories open on the driver of the latest "
                "report; null when no driver was reported or the catalog has no feed",
            },
            "settings_drift": {
                "type": "array",
                "items": _STR,
                "description": "each way the node runs otherwise than its bundle's signed "
                "driver settings (module parameters, GPU modes) declare",
            },
            "history": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Fleet": {
        "type": "object",
        "properties": {
            "nodes": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
            "summary": {
                "type": "object",
                "properties": {
                    "advisories": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/FleetAdvisories"},
                            {"type": "null"},
                        ],
                        "description": "the nodes by the worst advisory open on them, and "
                        "each CVE open somewhere; null when the catalog has no feed",
                    }
                },
            },
        },
    },
    "Stragglers": {
        "type": "object",
        "properties": {
            "window_reports": {"type": "integer", "description": "reports per GPU compared"},
            "nodes_compared": _INT,
            "computed_at": {
                "type": "number",
                "description": "server time (Unix seconds) of the ranking, recomputed at "
                "most once per report interval",
            },
            "nodes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "rank": _INT,
                        "node_id": _STR,
                        "score": {"type": "number"},
                        "stragglers": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "gpu": _NULL_INT,
                                    "model": {
                                        "type": "string",
                                        "description": "the peers compared with: the GPU "
                                        "model, and its enforced power limit where reported",
                                    },
                                    "metric": _STR,
                                    "value": {"type": "number"},
                                    "pool_median": {"type": "number"},
                                    "score": {"type": "number"},
                                    "message": _STR,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "ServerStatus": {
        "type": "object",
        "required": ["renewal"],
        "properties": {
            "renewal": {
                "type": "object",
                "required": ["state", "signers"],
                "properties": {
                    "state": {
                        "type": "string",
                        "enum": ["ok", "failing", "unknown"],
                        "description": "failing: a re-signer's last pass failed, or it is "
                        "overdue; unknown: none has kept an outcome yet",
                    },
                    "signers": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/RenewalStatus"},
                    },
                },
            }
        },
    },
    "RenewalStatus": {
        "type": "object",
        "description": "one re-signer (a host re-signing one repository): its last pass",
        "required": [
            "host",
            "repo",
            "outcome",
            "at",
            "last_ok_at",
            "failures",
            "problems",
            "next_try_at",
            "nearest_expiry",
            "overdue",
        ],
        "properties": {
            "host": _STR,
            "repo": _STR,
            "outcome": {"type": "string", "enum": ["ok", "failed"]},
            "at": {"type": "integer", "description": "when the pass ended (Unix seconds)"},
            "last_ok_at": {
                "type": ["integer", "null"],
                "description": "when a pass last succeeded since the server started",
            },
            "failures": {"type": "integer", "description": "failed passes in a row"},
            "problems": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "role": {"type": "string", "description": "e.g. image:timestamp"},
                        "reason": _STR,
                    },
                },
            },
            "next_try_at": _INT,
            "nearest_expiry": {
                "type": ["object", "null"],
                "description": "the served metadata that expires first",
                "properties": {"role": _STR, "expires_at": _INT},
            },
            "expiries": {
                "type": "array",
                "description": "the soonest expiry of each role, e.g. image:root, "
                "director:timestamp (the first of every node's)",
                "items": {
                    "type": "object",
                    "properties": {"role": _STR, "expires_at": _INT},
                },
            },
            "overdue": {
                "type": "boolean",
                "description": "a whole interval past its next try without a pass: it stopped",
            },
        },
    },
    "Pools": {
        "type": "object",
        "properties": {
            "pools": {
                "type": "array",
                "items": {"type": "object", "properties": {"pool": _STR, "nodes": _INT}},
            }
        },
    },
    "RolloutRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["pool", "target"],
        "properties": {
            "id": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9-]{0,63}$"},
            "pool": _STR,
            "target": {"type": "string", "description": "target path of a published bundle"},
            "policy": {"$ref": "#/components/schemas/Policy"},
        },
    },
    "Rollouts": {
        "type": "object",
        "properties": {
            "rollouts": {"type": "array", "items": {"$ref": "#/components/schemas/Rollout"}}
        },
    },
}


def _rollout() -> dict[str, Any]:
    """What the rollout routes answer: the stored rollout (its declaration), with
    counts per wave, and its events where one rollout is asked for."""
    record = Rollout.WIRE.schema()
    return {
        **record,
        "required": [*record["required"], "waves"],
        "properties": {
            **record["properties"],
            "waves": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "wave": _INT,
                        "nodes": _INT,
                        **{p: _INT for p in ("pending", "assigned", "done", "failed")},
                    },
                },
            },
            "events": {
                "type": "array",
                "items": {"type": "object", "properties": {"at": _INT, "event": _STR}},
            },
        },
    }


def _component_schemas() -> dict[str, Any]:
    """The wire documents' schemas, from their declarations, and the handlers' bodies."""
    declared = schemas(WIRE_DOCUMENTS)
    handlers = {**_HANDLER_SCHEMAS, "Rollout": _rollout()}
    twice = sorted(declared.keys() & handlers.keys())
    if twice:
        raise TypeError(f"schemas declared by a wire document and by hand: {', '.join(twice)}")
    return {**handlers, **declared}


SCHEMAS: dict[str, Any] = _component_schemas()

SECURITY_SCHEMES = {
    "operatorToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "an operator token from 'gpuward server token create'; roles viewer < "
        "operator < admin",
    },
    "nodeSignature": {
        "type": "apiKey",
        "in": "header",
        "name": HEADER_SIGNATURE,
        "description": (
            "Ed25519 signature (base64) by the node's enrolled key over "
            "'gpuward-request-v1\\nMETHOD\\nPATH?QUERY\\nNODE\\nTIMESTAMP\\nNONCE\\n"
            "SHA256(body) hex', "
            f"with {HEADER_NODE}, {HEADER_TIMESTAMP} (unix seconds, within 300 s) and "
            f"{HEADER_NONCE} (32 hex digits, used once)"
        ),
    },
}

_NODE_HEADERS = [
    {"name": HEADER_NODE, "in": "header", "required": True, "schema": _STR},
    {"name": HEADER_TIMESTAMP, "in": "header", "required": True, "schema": _STR},
    {"name": HEADER_NONCE, "in": "header", "required": True, "schema": _STR},
]


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", path)
    ]


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": f"{route.method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', route.path)}",
        "responses": {
            str(status): {
                "description": text,
                **(
                    {
                        "content": {
                            "application/json": {
                                "schema": {"$ref": f"#/components/schemas/{schema}"}
                            }
                        }
                    }
                    if schema
                    else {}
                ),
            }
            for status, (text, schema) in sorted(route.responses.items())
        },
    }
    parameters = _path_parameters(route.path) + [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in route.query.items()
    ]
    if route.auth == "node":
        parameters += _NODE_HEADERS
        op["security"] = [{"nodeSignature": []}]
    elif route.auth != "public":
        op["security"] = [{"operatorToken": []}]
        op["description"] = f"Needs the {route.auth} role."
    else:
        op["security"] = []
    if parameters:
        op["parameters"] = parameters
    if route.request:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{route.request}"}}
            },
        }
    return op


def document(routes: Iterable[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.in_openapi:
            paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gpuward update server",
            "version": VERSION,
            "description": "Pull-only: nodes enroll, report and read their assignment; "
            "operators read the fleet and steer rollouts. The signed image repository "
            "is served under /v1/repo/.",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }

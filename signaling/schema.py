"""JSON schemas of every client -> server signaling message.

The schemas are the contract: docs/protocol.md describes the same messages in prose, and
`validate()` is the only gate a message passes before any handler sees it. Keeping the
schemas strict (no additional properties, bounded string lengths) is what makes a malformed
or hostile message cheap to reject without touching meeting state.
"""

from __future__ import annotations

from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

PROTOCOL_VERSION = 1

#: Largest WebSocket text frame accepted, in bytes. An offer with 1 + 1 publish and
#: 9 + 3 receive m-sections from Chrome is ~25 KB; 256 KiB leaves room without letting a
#: client make the server parse megabytes.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_SDP_CHARS = 200_000

_ID = {"oneOf": [{"type": "string", "maxLength": 64}, {"type": "integer"}]}


def _msg(type_: str, props: dict[str, Any] | None = None, required: list[str] | None = None) -> dict:
    properties = {"type": {"const": type_}, "id": _ID}
    properties.update(props or {})
    return {
        "type": "object",
        "properties": properties,
        "required": ["type"] + (required or []),
        "additionalProperties": False,
    }


CLIENT_MESSAGES: dict[str, dict] = {
    "join": _msg(
        "join",
        {
            "token": {"type": "string", "minLength": 1, "maxLength": 4096},
            "name": {"type": "string", "maxLength": 80},
            "lang": {"enum": ["vi", "en"]},
            "protocol": {"type": "integer", "minimum": 1},
        },
        ["token"],
    ),
    "offer": _msg("offer", {"sdp": {"type": "string", "minLength": 1, "maxLength": MAX_SDP_CHARS}}, ["sdp"]),
    "media_state": _msg(
        "media_state",
        {"audio": {"type": "boolean"}, "video": {"type": "boolean"}},
        ["audio", "video"],
    ),
    "ping": _msg("ping"),
    "leave": _msg("leave"),
}

_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in CLIENT_MESSAGES.items()}


class MessageError(Exception):
    """A client message that cannot be handled; carries the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def validate(msg: Any) -> dict:
    """Check a decoded JSON value against the schema of its `type`.

    Raises MessageError with code `bad_message` (not an object / no type),
    `unknown_type` or `invalid_message` (schema violation, with the failing path).
    """
    if not isinstance(msg, dict):
        raise MessageError("bad_message", "a message must be a JSON object")
    type_ = msg.get("type")
    if not isinstance(type_, str):
        raise MessageError("bad_message", "a message needs a string field 'type'")
    validator = _VALIDATORS.get(type_)
    if validator is None:
        raise MessageError("unknown_type", f"unknown message type {type_[:40]!r}")
    error = jsonschema.exceptions.best_match(validator.iter_errors(msg))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(message)"
        raise MessageError("invalid_message", f"{type_}: {where}: {error.message[:200]}")
    return msg

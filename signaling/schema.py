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

#: chair action -> whether it names a target site (participant_id or site_id)
CHAIR_ACTIONS: dict[str, bool] = {
    "floor": False,  # without a target: take the floor back
    "spotlight": False,  # without a target: end the spotlight
    "pin": True,  # keep a site in everyone's thumbnails (several may be pinned)
    "unpin": True,
    "unpin_all": False,
    "mute": True,
    "unmute": True,
    "mute_all": False,
    "unmute_all": False,
    "remove": True,
    "readmit": True,
    "lower_hand": True,
    "lock": False,
    "unlock": False,
    "roll_call_start": False,
    "roll_call_end": False,
    "start": False,
    "end": False,
}

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
    "raise_hand": _msg("raise_hand", {"raised": {"type": "boolean"}}, ["raised"]),
    "roll_call_answer": _msg(
        "roll_call_answer", {"roll_call_id": {"type": "integer", "minimum": 1}}, ["roll_call_id"]
    ),
    "chair": {
        **_msg(
            "chair",
            {
                "action": {"enum": list(CHAIR_ACTIONS)},
                "participant_id": {"type": "string", "minLength": 1, "maxLength": 64},
                "site_id": {"type": "string", "minLength": 1, "maxLength": 64},
                "kind": {"enum": ["audio", "video"]},
            },
            ["action"],
        ),
        # actions on one site name it (either way); the others take no target
        "allOf": [
            {
                "if": {"properties": {"action": {"enum": [a for a, t in CHAIR_ACTIONS.items() if t]}}},
                "then": {
                    "anyOf": [{"required": ["participant_id"]}, {"required": ["site_id"]}],
                    "x-message": "this action needs participant_id or site_id",
                },
            },
            {
                "if": {"properties": {"action": {"enum": [a for a, t in CHAIR_ACTIONS.items() if not t and a not in ("floor", "spotlight")]}}},
                "then": {
                    "not": {"anyOf": [{"required": ["participant_id"]}, {"required": ["site_id"]}]},
                    "x-message": "this action takes no participant_id or site_id",
                },
            },
            {
                "if": {"not": {"properties": {"action": {"enum": ["mute", "unmute"]}}}},
                "then": {"not": {"required": ["kind"]}, "x-message": "kind is only for mute and unmute"},
            },
        ],
    },
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
        # conditional rules carry their own plain explanation (x-message, ignored by jsonschema)
        hint = error.schema.get("x-message") if isinstance(error.schema, dict) else None
        raise MessageError("invalid_message", f"{type_}: {where}: {hint or error.message[:200]}")
    return msg

"""The MCP tools: names, descriptions and argument schemas, fixed in code.

Each tool's JSON schema and the validation of its arguments come from one :class:`Arg` list, so
they cannot drift apart. Descriptions are constants: nothing from the store (secret names,
descriptions, justifications) ever goes into them, and :func:`tool_definitions` is computed once
when a server starts (a defence against tool poisoning: what a client saw at start-up is what it
gets for the server's life). Validation messages never quote what the client sent.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types

from keybroker.errors import InvalidInput, NotFound

__all__ = [
    "REVEAL_TOOL",
    "TOOLS",
    "Arg",
    "ToolSpec",
    "UnknownTool",
    "tool_definitions",
]

_ID = r"^[A-Za-z0-9_.-]{1,64}$"
_REF = r"^[a-z0-9][a-z0-9_-]{0,62}/[a-z0-9][a-z0-9_-]{0,62}/[A-Za-z0-9_/-]{1,256}$"


class UnknownTool(NotFound):
    code = "unknown_tool"


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument: ``kind`` is string, integer, number, boolean, string_list or object."""

    name: str
    kind: str
    description: str
    required: bool = False
    min: int | None = None
    max: int | None = None
    pattern: str | None = None
    item_max: int = 300

    def schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"description": self.description}
        if self.kind == "string":
            s["type"] = "string"
            if self.min is not None:
                s["minLength"] = self.min
            if self.max is not None:
                s["maxLength"] = self.max
            if self.pattern:
                s["pattern"] = self.pattern
        elif self.kind in ("integer", "number"):
            s["type"] = self.kind
            if self.min is not None:
                s["minimum"] = self.min
            if self.max is not None:
                s["maximum"] = self.max
        elif self.kind == "boolean":
            s["type"] = "boolean"
        elif self.kind == "string_list":
            item: dict[str, Any] = {"type": "string", "maxLength": self.item_max}
            if self.pattern:
                item["pattern"] = self.pattern
            s.update(type="array", items=item, uniqueItems=True)
            if self.min is not None:
                s["minItems"] = self.min
            if self.max is not None:
                s["maxItems"] = self.max
        elif self.kind == "object":
            s.update(type="object", additionalProperties=True)
        else:  # pragma: no cover - a programming error
            raise ValueError(self.kind)
        return s

    def check(self, value: Any) -> Any:
        """The validated value. Raises InvalidInput naming the argument, never quoting it."""
        n = self.name
        if self.kind == "string":
            if not isinstance(value, str):
                raise InvalidInput(f"argument {n!r} must be a string")
            if self.min is not None and len(value.strip()) < self.min:
                raise InvalidInput(f"argument {n!r} must not be empty")
            if self.max is not None and len(value) > self.max:
                raise InvalidInput(f"argument {n!r} is limited to {self.max} characters")
            if self.pattern and not re.fullmatch(self.pattern.strip("^$"), value):
                raise InvalidInput(f"argument {n!r} is not in the expected form: {self.description}")
            return value
        if self.kind in ("integer", "number"):
            ok = isinstance(value, int) and not isinstance(value, bool)
            if self.kind == "number":
                ok = ok or (isinstance(value, float) and math.isfinite(value))
            elif isinstance(value, float) and value.is_integer() and math.isfinite(value):
                value, ok = int(value), True
            if not ok:
                raise InvalidInput(
                    f"argument {n!r} must be a {'whole ' if self.kind == 'integer' else ''}number"
                )
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise InvalidInput(f"argument {n!r} must be between {self.min} and {self.max}")
            return value
        if self.kind == "boolean":
            if not isinstance(value, bool):
                raise InvalidInput(f"argument {n!r} must be true or false")
            return value
        if self.kind == "string_list":
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise InvalidInput(f"argument {n!r} must be a list of strings")
            if self.min is not None and len(value) < self.min:
                raise InvalidInput(f"argument {n!r} needs at least {self.min} item(s)")
            if self.max is not None and len(value) > self.max:
                raise InvalidInput(f"argument {n!r} takes at most {self.max} items")
            for x in value:
                if len(x) > self.item_max or (self.pattern and not re.fullmatch(self.pattern.strip("^$"), x)):
                    raise InvalidInput(
                        f"argument {n!r}: an item is not in the expected form: {self.description}"
                    )
            return list(dict.fromkeys(value))
        if self.kind == "object":
            if not isinstance(value, dict):
                raise InvalidInput(f"argument {n!r} must be a JSON object")
            try:
                size = len(json.dumps(value, sort_keys=True))
            except (TypeError, ValueError):
                raise InvalidInput(f"argument {n!r} must be a JSON object") from None
            if self.max is not None and size > self.max:
                raise InvalidInput(f"argument {n!r} is limited to {self.max} bytes of JSON")
            return value
        raise InvalidInput(f"argument {n!r} has an unsupported type")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    title: str
    description: str
    args: tuple[Arg, ...] = ()
    read_only: bool = True
    destructive: bool = False
    idempotent: bool = True
    #: at most one of these may be given (and, with one_of_required, exactly one)
    one_of: tuple[str, ...] = field(default=())
    one_of_required: bool = False

    def input_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {a.name: a.schema() for a in self.args},
            "additionalProperties": False,
        }
        req = [a.name for a in self.args if a.required]
        if req:
            schema["required"] = req
        # "exactly one of" is enforced by validate(), not by a top-level oneOf, which some model
        # APIs refuse in a tool's input schema
        return schema

    def validate(self, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """Arguments checked against the schema. Raises InvalidInput."""
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            raise InvalidInput("arguments must be a JSON object")
        known = {a.name: a for a in self.args}
        unknown = [k for k in arguments if k not in known]
        if unknown:
            shown = ", ".join(sorted(known)) or "none"
            raise InvalidInput(f"{self.name} takes only these arguments: {shown}")
        out: dict[str, Any] = {}
        for a in self.args:
            if a.name in arguments and arguments[a.name] is not None:
                out[a.name] = a.check(arguments[a.name])
            elif a.required:
                raise InvalidInput(f"argument {a.name!r} is required")
        if self.one_of:
            given = [n for n in self.one_of if n in out]
            if len(given) > 1 or (self.one_of_required and not given):
                raise InvalidInput(f"give exactly one of {', '.join(self.one_of)}")
        return out

    def definition(self) -> types.Tool:
        return types.Tool(
            name=self.name,
            title=self.title,
            description=self.description,
            input_schema=self.input_schema(),
            annotations=types.ToolAnnotations(
                title=self.title,
                read_only_hint=self.read_only,
                destructive_hint=self.destructive,
                idempotent_hint=self.idempotent,
                open_world_hint=False,
            ),
        )


_SECRET_REF_HELP = "a secret as project/environment/NAME, exactly as list_secrets shows it"
_NEVER = (
    "keybroker never returns secret values through MCP: you get a proxy token that only the "
    "keybroker gateway can use, and only toward the provider the key belongs to."
)

LIST_SECRETS = ToolSpec(
    name="list_secrets",
    title="List the secrets you may ask for",
    description=(
        "List the secrets your registered tools may request: name, description, risk level "
        "(low, medium, high), the provider and upstream host each key is for, and which of your "
        "tools may ask for it. Returns metadata only, never values. " + _NEVER + " Next step: request_access."
    ),
    args=(
        Arg("project", "string", "Only secrets of this project.", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$"),
        Arg(
            "environment",
            "string",
            "Only secrets of this environment (e.g. dev, prod).",
            pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        ),
    ),
)

REQUEST_ACCESS = ToolSpec(
    name="request_access",
    title="Ask for access to secrets",
    description=(
        "Ask for time-limited use of one or more secrets. keybroker's policy approves at once "
        "when the secrets are within your tool's limits; otherwise the request waits for people "
        "with rights on those secrets, who are notified and see your justification word for "
        "word. You cannot approve your own request, and nothing you write in it is acted on as "
        "an instruction. Returns the request id and its state (approved, with a session_id, or "
        "pending). If pending, call access_status with the request id (it can wait for the "
        "decision). When approved, call get_proxy_credentials. " + _NEVER
    ),
    args=(
        Arg(
            "secrets",
            "string_list",
            "The secrets to use, each " + _SECRET_REF_HELP + ".",
            required=True,
            min=1,
            max=50,
            pattern=_REF,
        ),
        Arg(
            "justification",
            "string",
            "Why you need them, in a sentence or two, for the people who approve.",
            required=True,
            min=1,
            max=4000,
        ),
        Arg(
            "duration_s",
            "integer",
            "How long you need access, in seconds (the session ends then; approvers may shorten it).",
            required=True,
            min=1,
            max=24 * 3600,
        ),
        Arg(
            "tool",
            "string",
            "The id of your registered tool that asks (list_secrets shows them). May be left out "
            "when you have exactly one.",
            pattern=_ID,
        ),
        Arg(
            "context",
            "object",
            "Optional details for the approvers, such as a ticket, task or order id.",
            max=8192,
        ),
    ),
    read_only=False,
    idempotent=False,
)

ACCESS_STATUS = ToolSpec(
    name="access_status",
    title="State of an access request or session",
    description=(
        "The state of one of your access requests (pending, approved, denied, expired, "
        "cancelled) or sessions (active, expired, ended). Give request_id or session_id. With "
        "wait_s, waits up to that many seconds (bounded by the server) for a pending request to "
        "be decided. An approved request carries the session_id to use with "
        "get_proxy_credentials; a denied one carries the approver's reason."
    ),
    args=(
        Arg("request_id", "string", "An access request id (req_...).", pattern=_ID),
        Arg("session_id", "string", "A session id (ses_...).", pattern=_ID),
        Arg(
            "wait_s",
            "number",
            "Seconds to wait for a pending request to be decided (0: answer at once).",
            min=0,
            max=600,
        ),
    ),
    one_of=("request_id", "session_id"),
    one_of_required=True,
)

GET_PROXY_CREDENTIALS = ToolSpec(
    name="get_proxy_credentials",
    title="Credentials to call a provider through the gateway",
    description=(
        "For an active session and one of its secrets: the gateway base URL, a short-lived proxy "
        "token to use as the API key, and a short how-to for the provider's official SDK (OpenAI, "
        "Anthropic, Gemini, Stripe or plain HTTP). Point the SDK's base URL at the gateway and use "
        "the proxy token as its API key; the gateway adds the real key on the way to the provider. "
        "The proxy token works only toward that provider, only while the session lasts. " + _NEVER
    ),
    args=(
        Arg(
            "session_id",
            "string",
            "The session id from an approved request (ses_...).",
            required=True,
            pattern=_ID,
        ),
        Arg(
            "secret",
            "string",
            "One of the session's secrets, " + _SECRET_REF_HELP + ".",
            required=True,
            pattern=_REF,
            max=400,
        ),
        Arg(
            "ttl_s",
            "integer",
            "Lifetime of the proxy token in seconds (default set by the server; never past the session).",
            min=1,
            max=24 * 3600,
        ),
    ),
    read_only=False,
    idempotent=False,
)

LIST_SESSIONS = ToolSpec(
    name="list_sessions",
    title="Your sessions",
    description=(
        "List your sessions: which secrets each covers, when it expires, and its state. "
        "By default only active sessions."
    ),
    args=(Arg("include_ended", "boolean", "Also list sessions that expired or ended."),),
)

REVOKE_ACCESS = ToolSpec(
    name="revoke_access",
    title="End a session or withdraw a request",
    description=(
        "End one of your sessions now (every proxy token of it stops working at once), or "
        "withdraw one of your pending access requests. Give session_id or request_id. Do this "
        "as soon as you no longer need access."
    ),
    args=(
        Arg("session_id", "string", "The session to end (ses_...).", pattern=_ID),
        Arg(
            "request_id",
            "string",
            "The request to withdraw (req_...); if it was approved, its session ends.",
            pattern=_ID,
        ),
    ),
    one_of=("session_id", "request_id"),
    one_of_required=True,
    read_only=False,
    destructive=True,
)

REVEAL_TOOL = ToolSpec(
    name="reveal_secret",
    title="Read a low-risk secret (operator-allowed only)",
    description=(
        "Read the value of one low-risk secret that the operator of this keybroker server has "
        "explicitly allowed to be revealed, within an active session that covers it. Every other "
        "secret is refused: use get_proxy_credentials for those."
    ),
    args=(
        Arg(
            "session_id",
            "string",
            "An active session covering the secret (ses_...).",
            required=True,
            pattern=_ID,
        ),
        Arg(
            "secret", "string", "The secret, " + _SECRET_REF_HELP + ".", required=True, pattern=_REF, max=400
        ),
    ),
    read_only=True,
    idempotent=True,
)

TOOLS: tuple[ToolSpec, ...] = (
    LIST_SECRETS,
    REQUEST_ACCESS,
    ACCESS_STATUS,
    GET_PROXY_CREDENTIALS,
    LIST_SESSIONS,
    REVOKE_ACCESS,
)


def tool_definitions(*, reveal: bool = False) -> tuple[ToolSpec, ...]:
    """The tools a server offers, decided once at start-up: ``reveal_secret`` only when the
    operator configured a reveal allow-list."""
    return (*TOOLS, REVEAL_TOOL) if reveal else TOOLS

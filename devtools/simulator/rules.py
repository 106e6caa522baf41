"""Target's rules for one update request: parameters, identity, limits, and its XML answers.

Every refusal but the quota's, in the order the package docstring documents.
"""

from __future__ import annotations

import dataclasses
import hmac
from dataclasses import dataclass, field
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from devtools.simulator.config import SimulatorConfig
from devtools.simulator.http import _Head, _Response

MAX_GET_URL_BYTES = 8192
MAX_POST_BODY_BYTES = 61440
MAX_THIRD_PARTY_ID_CHARS = 256
MAX_ATTRIBUTE_NAME_CHARS = 128
IDENTITY_PARAMS = ("mbox3rdPartyId", "mboxPC")
PROFILE_PREFIX = "profile."
SUCCESS_MESSAGE = "Request successfully submitted"
FORM = "application/x-www-form-urlencoded"


@dataclass
class _Update:
    """What a request asked for, parsed best-effort so rejected requests are still recorded."""

    identity_type: str = ""
    identity: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the 400 message, None when valid


@dataclass
class _Draws:
    """The per-request fault dice, thrown together so a seed replays exactly."""

    reset: bool
    error_429: bool
    error_5xx: bool
    spike: bool


def _parse_update(query: str, body: bytes | None) -> _Update:
    """Apply the documented parameter rules to the query string and the form body."""
    try:
        pairs = _pairs(query) + (_pairs(body.decode("utf-8")) if body else [])
    except UnicodeDecodeError:
        return _Update(error="parameters are not valid UTF-8")
    update = _Update()
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            update.error = update.error or f"duplicate parameter: {name}"
        seen.add(name)
        if name in IDENTITY_PARAMS:
            if update.identity_type and update.identity_type != name:
                update.error = update.error or "exactly one of mbox3rdPartyId or mboxPC is allowed"
            update.identity_type, update.identity = name, value
        elif name.startswith(PROFILE_PREFIX):
            update.attributes[name[len(PROFILE_PREFIX) :]] = value
        else:
            update.error = update.error or f"unknown parameter: {name}"
    update.error = update.error or _identity_error(update) or _attribute_error(update)
    return update


def _pairs(text: str) -> list[tuple[str, str]]:
    return parse_qsl(
        text, keep_blank_values=True, strict_parsing=False, encoding="utf-8", errors="strict"
    )


def _identity_error(update: _Update) -> str | None:
    if not update.identity_type:
        return "mbox3rdPartyId or mboxPC is required"
    if not update.identity:
        return f"{update.identity_type} must not be empty"
    if update.identity_type == "mbox3rdPartyId":
        if len(update.identity) > MAX_THIRD_PARTY_ID_CHARS:
            return f"mbox3rdPartyId is longer than {MAX_THIRD_PARTY_ID_CHARS} characters"
        if "+" in update.identity or "/" in update.identity:
            return "mbox3rdPartyId must not contain '+' or '/'"
    return None


def _attribute_error(update: _Update) -> str | None:
    for name in update.attributes:
        if not name:
            return "empty profile attribute name"
        if len(name) > MAX_ATTRIBUTE_NAME_CHARS:
            return f"profile attribute name longer than {MAX_ATTRIBUTE_NAME_CHARS} characters"
    return None


def _is_update_path(path: str, client_code: str | None) -> bool:
    parts = path.split("/")
    if len(parts) != 5 or parts[0] or parts[1] != "m2" or parts[3:] != ["profile", "update"]:
        return False
    return bool(parts[2]) and (client_code is None or parts[2] == client_code)


def _xml(success: bool, message: str, pc_id: str | None = None) -> bytes:
    """The Target response document; pcId only on success, as Adobe shows it."""
    pc = f"<pcId>{escape(pc_id or '')}</pcId>" if success else ""
    flag = "true" if success else "false"
    text = f"<response><success>{flag}</success>{pc}<message>{escape(message)}</message></response>"
    return text.encode("utf-8")


def _failure(status: int, message: str, **headers: str) -> _Response:
    return _Response(status, _xml(False, message), headers=dict(headers))


def _success(update: _Update) -> _Response:
    pc_id = update.identity if update.identity_type == "mboxPC" else ""
    return _Response(200, _xml(True, SUCCESS_MESSAGE, pc_id))


def _too_many(message: str, seconds: float) -> _Response:
    """A 429 that tells the client when to come back (and lets the server remember it)."""
    response = _failure(429, message, **{"Retry-After": _format_retry_after(seconds)})
    return dataclasses.replace(response, retry_after=seconds)


def _format_retry_after(seconds: float) -> str:
    """Whole seconds as an integer (HTTP's form); fractions kept so tests can retry fast."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return f"{seconds:.3f}".rstrip("0")


def _check_request(
    head: _Head,
    body: bytes | None,
    update: _Update,
    *,
    config: SimulatorConfig,
    draws: _Draws,
    origin: str,
) -> _Response | None:
    """Every refusal except the quota, in the documented order; None: acceptable.

    `origin` (``scheme://host:port``) stands in for a missing ``Host`` header in the URL length.
    """
    if body is None:
        return dataclasses.replace(
            _failure(413, f"body exceeds {MAX_POST_BODY_BYTES} bytes"), close=True
        )
    if draws.error_429:
        return _too_many("too many requests (injected)", config.retry_after_seconds)
    if draws.error_5xx:
        return _failure(503, "service unavailable (injected)")
    if head.method not in ("GET", "POST"):
        return _failure(405, "only GET and POST are allowed", Allow="GET, POST")
    if not _is_update_path(head.path, config.client_code):
        return _failure(404, "not found")
    if config.require_token is not None and not _authorized(head, config.require_token):
        return _failure(
            401, "missing or invalid profile API token", **{"WWW-Authenticate": "Bearer"}
        )
    if head.method == "GET" and _full_url_bytes(head, origin) > MAX_GET_URL_BYTES:
        return _failure(414, f"URL exceeds {MAX_GET_URL_BYTES} bytes")
    content_type = head.headers.get("content-type", "").split(";")[0].strip().lower()
    if head.method == "POST" and body and content_type != FORM:
        return _failure(415, f"POST body must be {FORM}")
    if update.error is not None:
        return _failure(400, update.error)
    return None


def _authorized(head: _Head, token: str) -> bool:
    supplied = head.headers.get("authorization", "")
    return hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode())


def _full_url_bytes(head: _Head, origin: str) -> int:
    """The URL's length as Adobe counts it: scheme, ``Host`` and the request target."""
    if "://" in head.target:  # absolute-form already carries scheme and host
        return len(head.target.encode("latin-1"))
    scheme, _, default_host = origin.partition("://")
    host = head.headers.get("host") or default_host
    return len(f"{scheme}://{host}{head.target}".encode("latin-1"))

"""Where bulk calls go: the batchUpdate URL per identity type, and a safe batchStatus URL.

thirdPartyId batches go to v2 (`/m2/{cc}/v2/profile/batchUpdate`); pcId batches too, unless
`bulk.pcid_api: v1` (Adobe: with ECID in use, don't key v2 batches by pcId).

A batchStatus URL comes from Target's answer: it is never followed to another origin than
`target.base_url`'s, since the token travels with every request. Its path and query are kept
and put on the configured origin (a relative URL is resolved there too); anything that is not
an http(s) URL, or holds whitespace or control characters, is refused as an unusable answer.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from consumer.bulk.rows import ID_COLUMNS
from consumer.errors import BulkAnswerError


class Endpoints:
    """The bulk URLs of one Target account, on one origin."""

    def __init__(self, *, base_url: str, client_code: str, pcid_api: str = "v2") -> None:
        self._base = base_url.rstrip("/")
        self._client_code = client_code
        self._pcid_api = pcid_api
        parts = urlsplit(self._base)
        self.origin = (parts.scheme.lower(), parts.netloc.lower())

    def submit_url(self, identity_type: str) -> str:
        if identity_type not in ID_COLUMNS:
            raise ValueError(f"identity_type must be one of {sorted(ID_COLUMNS)}")
        v1 = identity_type == "mboxPC" and self._pcid_api == "v1"
        version = "" if v1 else "/v2"
        return f"{self._base}/m2/{self._client_code}{version}/profile/batchUpdate"

    def version(self, identity_type: str) -> str:
        return "v2" if "/v2/" in self.submit_url(identity_type) else "v1"

    def status_url(self, given: str, *, details: bool = True) -> tuple[str, bool]:
        """(the URL to poll, whether it had to be moved to the configured origin)."""
        if not given or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in given):
            raise BulkAnswerError("the batchStatus URL is empty or holds whitespace")
        parts = urlsplit(given)
        if parts.scheme and parts.scheme.lower() not in ("http", "https"):
            raise BulkAnswerError("the batchStatus URL is not an http(s) URL")
        if not parts.path.startswith("/"):
            raise BulkAnswerError("the batchStatus URL has no absolute path")
        moved = bool(parts.netloc) and (parts.scheme.lower(), parts.netloc.lower()) != self.origin
        query = parts.query
        if details and "showdetails=" not in query.lower():
            query = f"{query}&showDetails=true" if query else "showDetails=true"
        scheme, netloc = urlsplit(self._base)[:2]
        return urlunsplit((scheme, netloc, parts.path, query, "")), moved

"""Which forward proxy the send path goes through, and how a proxy URL may appear in logs.

`target.proxy` wins; without it the usual variables decide, as curl and httpx read them:
`HTTPS_PROXY` / `HTTP_PROXY` (lower case first) for Target's scheme, then `ALL_PROXY`, unless
`NO_PROXY` names Target's host. One origin, so the choice is made once, at start-up.

Credentials never sit in the config file in clear: `target.proxy` may hold `${NAME}`
references to environment variables (a Secret's), or come whole from
`PROFILE_CONSUMER__TARGET__PROXY`. A proxy URL is only ever shown through `mask()`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

from consumer.errors import ConfigError

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_USERINFO = re.compile(r"(?<=://)[^/?#@\s]*@")


def mask(text: str) -> str:
    """`text` with the user:password of every URL in it replaced by `***`."""
    return _USERINFO.sub("***@", text)


def expand(url: str, environ: Mapping[str, str]) -> str:
    """Replace `${NAME}` references; inside the userinfo the value is percent-encoded.

    Encoding there lets a password hold `@`, `:` or `/` without changing where the URL points.
    """
    scheme, sep, rest = url.partition("://")
    authority_end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found >= 0:
            authority_end = min(authority_end, found)
    at = rest.rfind("@", 0, authority_end)
    if not sep or at < 0:
        return _substitute(url, environ, encode=False)
    userinfo = _substitute(rest[:at], environ, encode=True)
    return f"{scheme}://{userinfo}@{_substitute(rest[at + 1 :], environ, encode=False)}"


def _substitute(text: str, environ: Mapping[str, str], *, encode: bool) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            # The name only: the variable is missing, there is no value to leak.
            raise ConfigError([f"target.proxy: environment variable {name} is not set"])
        return quote(environ[name], safe="") if encode else environ[name]

    return _REFERENCE.sub(value, text)


def choose_proxy(target_url: str, configured: str | None, environ: Mapping[str, str]) -> str | None:
    """The proxy URL for `target_url` (credentials included), or None to connect directly."""
    if configured:
        return expand(configured, environ)
    parts = urlsplit(target_url)
    scheme = parts.scheme
    found = _variable(environ, f"{scheme}_proxy") or _variable(environ, "all_proxy")
    if not found:
        return None
    no_proxy = _variable(environ, "no_proxy")
    if no_proxy and parts.hostname and bypassed(parts.hostname, no_proxy):
        return None
    # A bare host:port means an HTTP proxy, as curl reads it.
    return found if "://" in found else f"http://{found}"


def bypassed(host: str, no_proxy: str) -> bool:
    """Whether NO_PROXY names `host`: `*`, the host, a parent domain (`.example.com` or
    `example.com`, optionally `*.`), an IP address or a CIDR range; a `:port` is ignored."""
    host = host.lower().strip("[]")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry.count(":") == 1:
            entry = entry.partition(":")[0]
        entry = entry.strip("[]").removeprefix("*").lstrip(".")
        if raw.strip() == "*":
            return True
        if not entry:
            continue
        if host == entry or host.endswith("." + entry) or _in_network(host, entry):
            return True
    return False


def _in_network(host: str, entry: str) -> bool:
    if "/" not in entry:
        return False
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


def _variable(environ: Mapping[str, str], name: str) -> str | None:
    # Lower case first, as urllib, curl and httpx read them; Kubernetes manifests use upper.
    return environ.get(name.lower()) or environ.get(name.upper()) or None

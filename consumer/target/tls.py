"""The TLS context for Target: certifi's bundle, a configured CA bundle, or no verification."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

import certifi

from consumer.config import Settings


def tls_context(settings: Settings, environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """Verify against certifi's bundle, a configured CA bundle, or not at all.

    With `verify_tls: true`, SSL_CERT_FILE / SSL_CERT_DIR (a corporate CA, as OpenSSL, curl
    and httpx read them) replace certifi's bundle.
    """
    environ = os.environ if environ is None else environ
    tls = settings.target.verify_tls
    cafile: str | None = certifi.where()
    capath = None
    if not isinstance(tls, bool):
        cafile = str(settings.resolve(tls))
    elif environ.get("SSL_CERT_FILE") or environ.get("SSL_CERT_DIR"):
        cafile = environ.get("SSL_CERT_FILE") or None
        capath = environ.get("SSL_CERT_DIR") or None
    context = ssl.create_default_context(cafile=cafile, capath=capath)
    if tls is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context

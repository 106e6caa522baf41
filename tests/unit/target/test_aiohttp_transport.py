"""aiohttp's errors as the send path reports them (consumer/target/aiohttp_transport.py)."""

from __future__ import annotations

import aiohttp
import httpx
import pytest
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from consumer.target.aiohttp_transport import NotResent, _raise_mapped

pytestmark = pytest.mark.unit
URL = yarl.URL("http://127.0.0.1/m2/acme/profile/update?mboxPC=someone")
INFO = aiohttp.RequestInfo(URL, "GET", CIMultiDictProxy(CIMultiDict()), URL)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        # A peer that hung up: a stale connection's signature, retried once if it was reused.
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), httpx.ReadError),
        (aiohttp.ClientConnectionResetError("Cannot write to closing transport"), httpx.WriteError),
        # Framing: the body's, the head's.
        (
            aiohttp.ClientPayloadError("Response payload is not completed"),
            httpx.RemoteProtocolError,
        ),
        (
            aiohttp.ClientResponseError(INFO, (), status=400, message="Invalid header"),
            httpx.RemoteProtocolError,
        ),
        # Timeouts are timeouts.
        (aiohttp.ConnectionTimeoutError(), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError(), httpx.ReadTimeout),
        (TimeoutError(), httpx.ReadTimeout),
    ],
)
@pytest.mark.parametrize("wrapping", ["raw", "httpx_aiohttp", "not_resent"])
def test_errors_are_mapped_by_what_happened(
    raised: BaseException, expected: type[Exception], wrapping: str
) -> None:
    thrown: BaseException = raised
    if wrapping == "httpx_aiohttp":  # its own mapping, `raise mapped(str(exc)) from exc`
        thrown = httpx.ConnectTimeout(str(raised))
        thrown.__cause__ = raised
    elif wrapping == "not_resent":  # what our middleware raises instead
        thrown = NotResent(str(raised))
        thrown.__cause__ = raised
    with pytest.raises(httpx.TransportError) as info:
        _raise_mapped(thrown)
    assert type(info.value) is expected
    assert info.value.__cause__ is raised
    assert "someone" not in str(info.value)  # no URL: it holds the profile identity

"""Choosing the proxy for Target, expanding its credentials, masking it wherever it is shown."""

from __future__ import annotations

import pytest

from consumer.config import load_settings
from consumer.errors import ConfigError
from consumer.target.proxy import bypassed, choose_proxy, expand, mask

pytestmark = pytest.mark.unit
TARGET = "https://acme.tt.omtrdc.net"


def test_the_configured_proxy_wins_and_its_references_are_encoded_in_the_userinfo() -> None:
    env = {"U": "svc", "P": "p@ss:w/rd", "HTTPS_PROXY": "http://other:1"}
    chosen = choose_proxy(TARGET, "http://${U}:${P}@proxy:3128", env)
    assert chosen == "http://svc:p%40ss%3Aw%2Frd@proxy:3128"
    with pytest.raises(ConfigError, match="P_MISSING is not set"):
        expand("http://u:${P_MISSING}@proxy:3128", {})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"HTTPS_PROXY": "http://p:1"}, "http://p:1"),
        ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"}, "http://lower:1"),
        ({"ALL_PROXY": "p:3128"}, "http://p:3128"),
        ({"HTTP_PROXY": "http://p:1"}, None),  # not for an https:// Target
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".omtrdc.net"}, None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None),
        ({"HTTPS_PROXY": "http://p:1", "no_proxy": "example.com, tt.omtrdc.net"}, None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "omtrdc.net.evil"}, "http://p:1"),
    ],
)
def test_environment_variables_decide_without_a_configured_proxy(
    env: dict[str, str], expected: str | None
) -> None:
    assert choose_proxy(TARGET, None, env) == expected


def test_no_proxy_matches_hosts_domains_ips_and_ranges() -> None:
    assert bypassed("10.1.2.3", "10.0.0.0/8") and bypassed("127.0.0.1", "127.0.0.1:8080")
    assert not bypassed("acme.tt.omtrdc.net", "omtrdc") and not bypassed("h", "")


def test_credentials_are_masked() -> None:
    assert mask("http://u:s3cret@p:1 and https://x@q") == "http://***@p:1 and https://***@q"
    assert mask("http://p:1") == "http://p:1"


def test_the_proxy_key_is_validated_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"PROFILE_CONSUMER__TARGET__PROXY": "ftp://u:s3cret@p"})
    assert "target.proxy" in str(info.value) and "s3cret" not in str(info.value)
    settings = load_settings(None, {"PROFILE_CONSUMER__TARGET__PROXY": "http://${U}:${P}@p:3128"})
    assert settings.target.proxy is not None and "${P}" not in repr(settings)

"""Redis URLs: standalone, TLS, Sentinel and Cluster forms, and their mistakes."""

from __future__ import annotations

import pytest

from extauthz.errors import ConfigError
from extauthz.storage.client import key_prefix, parse, redact_url


def test_sentinel_url() -> None:
    t = parse(
        "rediss+sentinel://app:s3cret@10.0.0.1:26379,10.0.0.2/models/2"
        "?sentinel_password=s3ntinel&ssl_ca_certs=/etc/ca.pem"
    )
    assert t.kind == "sentinel"
    assert t.nodes == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (t.service, t.db, t.username, t.password) == ("models", 2, "app", "s3cret")
    assert t.sentinel_auth == {"password": "s3ntinel"}
    assert t.node_kwargs()["ssl"] is True
    assert t.node_kwargs()["ssl_ca_certs"] == "/etc/ca.pem"
    assert "s3cret" not in repr(t) and "s3ntinel" not in repr(t)


def test_cluster_url() -> None:
    t = parse("redis+cluster://:pw@[::1]:7000,127.0.0.1:7001")
    assert t.kind == "cluster"
    assert t.nodes == (("::1", 7000), ("127.0.0.1", 7001))
    assert t.username is None and t.password == "pw"
    assert "ssl" not in t.node_kwargs()


def test_standalone_urls() -> None:
    assert parse("redis://localhost:6379/3").db == 3
    assert parse("rediss://h:6380/0?ssl_cert_reqs=required").kind == "standalone"
    assert parse("unix:///run/redis.sock?db=1").db == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost", "the scheme must be one of"),
        ("redis+sentinel://h:26379", "ends in /<primary name>"),
        ("redis+sentinel://h:26379/m/x", "database number 'x' is not a number"),
        ("redis+cluster://h:7000/0", "a Cluster URL has no path"),
        ("redis+cluster://h:port", "port 'port' is not a number"),
        ("redis+cluster://:pw@,h:1", "a host is missing"),
        ("redis+cluster://h:1?sentinel_password=x", "unknown option 'sentinel_password'"),
        ("redis://h:notaport", "invalid Redis URL"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="invalid Redis URL") as e:
        parse(url)
    assert message in str(e.value)


def test_redaction_covers_user_info_and_query() -> None:
    url = "redis+sentinel://u:p4ss@h1:1,h2:2/m?sentinel_password=s3nt&ssl_ca_certs=/ca"
    shown = redact_url(url)
    assert "p4ss" not in shown and "s3nt" not in shown
    assert shown == "redis+sentinel://u:***@h1:1,h2:2/m?sentinel_password=***&ssl_ca_certs=/ca"
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_cluster_prefix_gets_a_hash_tag() -> None:
    cluster = "redis+cluster://h:7000"
    assert key_prefix(cluster, "extauthz:", "extauthz:") == "{extauthz}:"
    assert key_prefix(cluster, "{models}:", "extauthz:") == "{models}:"
    assert key_prefix("redis://h", "models:", "extauthz:") == "models:"
    with pytest.raises(ConfigError, match=r"e\.g\. '\{models\}:'"):
        key_prefix(cluster, "models:", "extauthz:")
    with pytest.raises(ConfigError):
        key_prefix(cluster, "{}:", "extauthz:")  # an empty tag hashes the whole key
    with pytest.raises(ConfigError):
        key_prefix(cluster, "{}{models}:", "extauthz:")  # only the first {...} counts

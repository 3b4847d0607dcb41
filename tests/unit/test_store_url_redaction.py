"""Every credential form a store URL can carry is hidden wherever the URL is shown."""

from __future__ import annotations

import pytest

from llm_router.state.connect import StoreUrlError, open_store, redact_url

SECRET = "s3cr3t"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://user:{SECRET}@h:6379/0", "redis://***@h:6379/0"),
        (f"redis://:{SECRET}@h:6379/0", "redis://***@h:6379/0"),
        (f"rediss://h:6380/1?password={SECRET}", "rediss://h:6380/1?password=***"),
        (f"redis://h/0?username=u{SECRET}&db=2", "redis://h/0?username=***&db=2"),
        (f"redis://h/0?ssl_password={SECRET}", "redis://h/0?ssl_password=***"),
        (f"redis://h/0?PassWord={SECRET}&socket_timeout=1", "redis://h/0?PassWord=***&socket_timeout=1"),
        (f"unix://u:{SECRET}@/run/redis.sock?db=0", "unix://***@/run/redis.sock?db=0"),
        (f"unix:///run/redis.sock?password={SECRET}", "unix:///run/redis.sock?password=***"),
        (f"redis+sentinel://{SECRET}@s1:26379,s2:26379/mymaster/0",
         "redis+sentinel://***@s1:26379,s2:26379/mymaster/0"),
        (f"redis+sentinel://s1:26379/mymaster?sentinel_password={SECRET}",
         "redis+sentinel://s1:26379/mymaster?sentinel_password=***"),
        (f"redis+cluster://u:{SECRET}@c1:7000,c2:7001?require_full_coverage",
         "redis+cluster://***@c1:7000,c2:7001?require_full_coverage"),
        (f"redis://h/0#{SECRET}", "redis://h/0"),
        (f"user:{SECRET}@h:6379", "***"),
    ],
)  # fmt: skip
def test_credentials_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in redact_url(url)


def test_a_bad_scheme_error_does_not_echo_the_password() -> None:
    with pytest.raises(StoreUrlError) as raised:
        open_store(f"user:{SECRET}@h:6379")
    assert SECRET not in str(raised.value)

"""The webhook rules server and worker share (jobs/webhooks.py) and the worker's resolver guard."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks.webhooks import Webhook

from jobs.webhooks import AddressRule, new_secret, next_delay_s, parse_tenant_webhooks, sign, tenant_line
from worker.webhooks import AddressRefused, GuardedResolver


def test_the_signature_is_the_standard_webhooks_one() -> None:
    secret, body = new_secret(), b'{"type":"download.completed"}'
    ours = sign(secret, "msg_1", 1_700_000_000, body)
    theirs = Webhook(secret).sign("msg_1", datetime.fromtimestamp(1_700_000_000, UTC), body)
    assert ours == theirs
    assert sign(secret, "msg_2", 1_700_000_000, body) != ours


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.example.com/longhaul?t=1", None),
        ("http://203.0.113.9:8080/x", "private"),  # TEST-NET-3: documentation only, never a receiver
        ("http://8.8.8.8/x", None),
        ("http://127.0.0.1:9000/x", None),  # allowed below
        ("http://127.0.0.2/x", "loopback"),
        ("http://[::1]/x", "loopback"),
        ("http://192.168.1.10/x", "private"),
        ("http://0.0.0.0/x", "unspecified"),
        ("http://hooks.internal/x", None),
        ("http://LOCALHOST./x", "loopback"),
        ("http://hooks.example.com:99999/x", "not a URL"),
        ("javascript:alert(1)", "http:// or https://"),
        ("https:///no-host", "http:// or https://"),
        ("https://" + "a" * 2100 + ".com/", "the limit is 2048"),
    ],
)
def test_which_callback_urls_are_refused_as_written(url: str, problem: str | None) -> None:
    found = AddressRule("127.0.0.1, 10.0.0.0/8").url_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found), found


class _Resolves(AbstractResolver):
    def __init__(self, *addresses: str) -> None:
        self._addresses = addresses

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0) for a in self._addresses
        ]

    async def close(self) -> None:
        pass


async def test_a_name_that_resolves_to_an_address_kept_to_ourselves_is_not_connected_to() -> None:
    rule = AddressRule("10.1.0.0/16")
    mixed = await GuardedResolver(rule, _Resolves("192.168.0.7", "8.8.8.8", "10.1.2.3")).resolve("hooks.example.com", 443)
    assert [r["host"] for r in mixed] == ["8.8.8.8", "10.1.2.3"], "a public address, and the allowed block's"
    with pytest.raises(AddressRefused, match=r"hooks.example.com \(169.254.169.254\) is a link-local address"):
        await GuardedResolver(rule, _Resolves("169.254.169.254")).resolve("hooks.example.com", 80)
    named = AddressRule("hooks.internal")
    assert await GuardedResolver(named, _Resolves("192.168.0.7")).resolve("hooks.internal", 80)


def test_retries_wait_the_configured_delays_then_give_up() -> None:
    delays = [5.0, 30.0]
    assert 4.5 <= next_delay_s(delays, 1) <= 5.0  # type: ignore[operator]
    assert 27.0 <= next_delay_s(delays, 2) <= 30.0  # type: ignore[operator]
    assert next_delay_s(delays, 3) is None


def test_tenants_webhook_lines_are_read_and_a_bad_one_is_named() -> None:
    secret = new_secret()
    lines = [f"0a1b2c3d sha256:{'0' * 64} acme", tenant_line("acme", secret, "https://h.example/x"), tenant_line("beta", secret)]
    text = "\n".join(lines)
    hooks = parse_tenant_webhooks(text)
    assert (hooks["acme"].secret, hooks["acme"].default_url, hooks["beta"].default_url) == (secret, "https://h.example/x", "")
    with pytest.raises(ValueError, match="line 2: a webhook secret reads whsec_"):
        parse_tenant_webhooks("# keys\nwebhook acme whsec_short\n")

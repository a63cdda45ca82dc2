"""Webhooks, what server and worker agree on: the signature (the Standard Webhooks scheme), which
addresses a callback may reach, when a failed delivery is tried again, and tenants' own secrets.

A signature is `v1,` and the base64 of HMAC-SHA256, keyed with the secret's bytes, over
`{webhook-id}.{webhook-timestamp}.{body}`; a secret is `whsec_` and the base64 of its bytes. Any
Standard Webhooks library verifies it (the tests use the `standardwebhooks` package).

Tenants' own secrets, and their default callback URLs, are lines of the API key file
(`python -m server.apikeys webhook TENANT [URL]` writes one):

    webhook <tenant> whsec_<base64> [<url>]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import random
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from jobs.watched_file import WatchedFile

SECRET_PREFIX = "whsec_"
MAX_URL_LEN = 2048
TENANT_LINE = "webhook"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    """The key of a `whsec_` secret; ValueError for anything else."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        key = b""
    if not secret.startswith(SECRET_PREFIX) or not 24 <= len(key) <= 64:
        raise ValueError("a webhook secret reads whsec_ and the base64 of 24 to 64 random bytes")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header of one delivery."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_id(job_id: str, seq: int | str) -> str:
    """One id per ending of a job (a job retried in place can end again): the same for every
    delivery of that ending, so receivers can drop duplicates."""
    return f"msg_{job_id}_{seq}"


def retry_delays(setting: str) -> list[float]:
    """WEBHOOK_RETRY_DELAYS_S as seconds; ValueError when malformed."""
    delays = [float(part) for part in setting.split(",") if part.strip()]
    if any(delay <= 0 for delay in delays):
        raise ValueError("each delay must be positive")
    return delays


def next_delay_s(delays: list[float], attempts: int) -> float | None:
    """How long to wait after the `attempts`-th failed attempt, jittered by up to a tenth so that
    the deliveries a receiver's outage held back do not all come at once; None: give up."""
    if attempts > len(delays):
        return None
    return delays[attempts - 1] * random.uniform(0.9, 1.0)


class AddressRule:
    """Callback URLs may not reach loopback, private, link-local or otherwise special addresses
    (the service's own network) unless WEBHOOK_ALLOWED_HOSTS names the host, the address or a block
    that holds it."""

    def __init__(self, allowed_hosts: str) -> None:
        self._names: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in filter(None, (part.strip().lower() for part in allowed_hosts.split(","))):
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._names.add(entry.rstrip("."))

    def url_problem(self, url: str) -> str | None:
        """What is wrong with a callback URL as written, or None. (Where a host name leads is checked
        at each delivery, by refusal(): it can change.)"""
        if len(url) > MAX_URL_LEN:
            return f"callback_url is {len(url)} characters long; the limit is {MAX_URL_LEN}"
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").rstrip(".")
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError as error:
            return f"callback_url {url!r} is not a URL: {error}"
        if parts.scheme not in ("http", "https") or not host:
            return f"callback_url {url!r} must be an http:// or https:// URL with a host"
        if parts.username is not None or parts.password is not None:
            return "callback_url must not carry a user name or password; put a token in its path or query"
        if host == "localhost" or host.endswith(".localhost"):
            return None if self._named(host) else _refused(host, "loopback")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        return self.refusal(host, address)

    def refusal(self, host: str, address: IpAddress) -> str | None:
        """Why `host`, at `address`, may not be called back, or None."""
        kind = _special(address)
        if kind is None or self._named(host) or any(address in network for network in self._networks):
            return None
        return _refused(host if host == str(address) else f"{host} ({address})", kind)

    def _named(self, host: str) -> bool:
        return host.lower().rstrip(".") in self._names


def _special(address: IpAddress) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    # Python's is_private also holds the documentation, benchmarking and shared (carrier NAT) blocks:
    # no receiver a caller may name is there either.
    for kind, test in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private or not address.is_global),
    ):
        if test:
            return kind
    return None


def _refused(host: str, kind: str) -> str:
    return f"callback_url's host {host} is a {kind} address, which this deployment does not call (WEBHOOK_ALLOWED_HOSTS)"


@dataclass(frozen=True)
class TenantWebhook:
    secret: str
    default_url: str = ""


def parse_tenant_webhooks(text: str, source: str = "the key file") -> dict[str, TenantWebhook]:
    """The `webhook` lines of the key file, by tenant."""
    webhooks: dict[str, TenantWebhook] = {}
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts or parts[0] != TENANT_LINE:
            continue
        if len(parts) not in (3, 4):
            raise ValueError(f"{source}, line {number}: expected 'webhook <tenant> whsec_<base64> [url]'")
        try:
            secret_bytes(parts[2])
        except ValueError as error:
            raise ValueError(f"{source}, line {number}: {error}") from None
        webhooks[parts[1]] = TenantWebhook(parts[2], parts[3] if len(parts) == 4 else "")
    return webhooks


def tenant_line(tenant: str, secret: str, default_url: str = "") -> str:
    return f"{TENANT_LINE} {tenant} {secret}" + (f" {default_url}" if default_url else "")


class TenantWebhooks:
    """Tenants' secrets and default URLs as a server or worker sees them: from the key file, read
    again when it changes."""

    def __init__(self, path: str) -> None:
        self._file: WatchedFile[dict[str, TenantWebhook]] = WatchedFile(
            path, parse_tenant_webhooks, {}, "tenants' webhook secrets"
        )

    def get(self, tenant: str) -> TenantWebhook | None:
        self._file.refresh_due()
        return self._file.value.get(tenant)

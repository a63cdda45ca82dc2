"""Tenants: who owns a job. Every Redis key and S3 prefix that is per tenant uses the tenant's slug."""

from __future__ import annotations

import hashlib
import re

MAX_TENANT_LEN = 128
# Plain names start with a letter or digit: "." and ".." would be path segments of their own in an
# object key (tenants/../...), and a leading "-" or "." is a trap in shells and listings.
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def tenant_slug(tenant: str) -> str:
    """The tenant as it appears in keys and object paths: itself when short and plain, else a hash.

    Plain names keep Redis and the bucket readable for operators; anything else (a JWT subject like
    "jwt:auth0|5f1e...") is hashed, so no character can break out of its key or path segment. "~" is
    not in the plain alphabet, so a hashed slug never equals a plain one.
    """
    if _SAFE.fullmatch(tenant):
        return tenant
    return "~" + hashlib.sha256(tenant.encode()).hexdigest()[:32]


def valid_tenant(tenant: str) -> bool:
    return 0 < len(tenant) <= MAX_TENANT_LEN and tenant.isprintable()

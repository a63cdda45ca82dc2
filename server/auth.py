"""Who is calling: a bearer token (an API key or a JWT) becomes a tenant, or UNAUTHENTICATED.

Messages say what is wrong with the credentials and never repeat them: an API key is named by its
id only, a JWT not at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt

from jobs.settings import ConfigError, Settings
from jobs.tenants import valid_tenant
from server.apikeys import JWT_TENANT_PREFIX, OPERATOR_PREFIX, KeyEntry, KeyFile, key_id_of

_ASYMMETRIC = ("RS256", "ES256")
# RFC 7519's NumericDate claims: numbers. PyJWT also takes numeric strings, which we refuse.
_DATE_CLAIMS = ("exp", "nbf", "iat")
# Verified JWTs are remembered briefly (a signature check costs more than the call it guards).
_CACHE_LIMIT = 10_000
_CACHE_S = 30.0


# The challenge HTTP clients get with a 401 (RFC 6750).
WWW_AUTHENTICATE = 'Bearer realm="longhaul"'


class Unauthenticated(Exception):
    pass


class PermissionDenied(Exception):
    """Valid credentials without the scope the call needs."""


def bearer(metadata: Iterable[tuple[str, Any]]) -> str:
    """The token of the call's `authorization: Bearer <token>` metadata."""
    for name, value in metadata:
        if name.lower() == "authorization":
            scheme, _, token = str(value).strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the authorization header must read 'Bearer <API key or JWT>'")
            return token.strip()
    raise Unauthenticated(
        "no credentials: send the metadata (HTTP header) 'authorization: Bearer <API key or JWT>'"
    )


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        try:
            self._keys = KeyFile(settings.api_keys_file)
            self._jwks = _load_jwks(settings.jwt_jwks_file) if settings.jwt_jwks_file else {}
        except (OSError, ValueError, jwt.PyJWTError) as error:
            raise ConfigError(f"the credentials settings (API_KEYS_FILE, JWT_JWKS_FILE) cannot work: {error}") from error
        self._verified: dict[str, tuple[str, bool, float]] = {}  # token -> tenant, operator role, until

    def tenant(self, metadata: Iterable[tuple[str, Any]]) -> str:
        """The tenant whose downloads the call may start and read."""
        token = bearer(metadata)
        if token.startswith("lh_"):
            entry = self._api_key(token)
            if entry.operator:
                raise PermissionDenied(
                    f"API key lh_{entry.key_id}_... is an operator's key: it has no tenant, so it cannot start or read "
                    "downloads; use a tenant's key"
                )
            return entry.tenant
        if token.count(".") == 2:
            return self._jwt(token)[0]
        raise Unauthenticated("the bearer token is neither a Longhaul API key (lh_...) nor a JWT")

    def operator(self, metadata: Iterable[tuple[str, Any]]) -> str:
        """Who the operator making the call is (an operator's key's name, or "jwt:" and the JWT's
        tenant claim), for calls that need the operator scope."""
        token = bearer(metadata)
        if token.startswith("lh_"):
            entry = self._api_key(token)
            if not entry.operator:
                raise PermissionDenied(
                    f"API key lh_{entry.key_id}_... is a tenant's key; the operator API needs an operator's key "
                    "(python -m server.apikeys create-operator NAME) or a JWT with the operator role"
                )
            return OPERATOR_PREFIX + entry.operator
        if token.count(".") == 2:
            tenant, operator = self._jwt(token)
            if not operator:
                role, claim = self._settings.jwt_operator_role, self._settings.jwt_roles_claim
                raise PermissionDenied(f"the JWT does not have the operator role: its '{claim}' claim must hold {role!r}")
            return tenant
        raise Unauthenticated("the bearer token is neither a Longhaul API key (lh_...) nor a JWT")

    def _api_key(self, key: str) -> KeyEntry:
        if not self._keys.configured:
            raise Unauthenticated("API keys are not accepted here: the server has no API_KEYS_FILE")
        entry = self._keys.entry(key)
        if entry is None:
            key_id = key_id_of(key)
            named = f"API key lh_{key_id}_..." if key_id else "the API key (malformed)"
            raise Unauthenticated(f"{named} is not valid: unknown or revoked")
        return entry

    def _jwt(self, token: str) -> tuple[str, bool]:
        """(tenant, whether the JWT has the operator role)."""
        cached = self._verified.get(token)
        now = time.time()
        if cached is not None and cached[2] > now:
            return cached[0], cached[1]
        claims = self._verify(token)
        for name in _DATE_CLAIMS:
            if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], (int, float))):
                raise Unauthenticated(f"the JWT's '{name}' claim must be a number of seconds since 1970 (RFC 7519)")
        subject = claims.get(self._settings.jwt_tenant_claim)
        tenant = JWT_TENANT_PREFIX + subject if isinstance(subject, str) and subject else ""
        if not valid_tenant(tenant):
            raise Unauthenticated(f"the JWT's '{self._settings.jwt_tenant_claim}' claim must name the tenant")
        roles = claims.get(self._settings.jwt_roles_claim, [])
        # A list of roles, or a space-separated string of them (as OAuth's `scope` is).
        operator = self._settings.jwt_operator_role in (roles.split() if isinstance(roles, str) else roles)
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[token] = (tenant, operator, min(float(claims["exp"]), now + _CACHE_S))
        return tenant, operator

    def _verify(self, token: str) -> dict[str, Any]:
        s = self._settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the JWT is malformed") from None
        algorithm = header.get("alg")
        # One algorithm per kind of key: a public key is never taken as an HMAC secret.
        if algorithm == "HS256" and s.jwt_hs256_secret:
            key: Any = s.jwt_hs256_secret
        elif algorithm in _ASYMMETRIC and self._jwks:
            jwk = self._jwks.get(header.get("kid", ""))
            if jwk is None or jwk.algorithm_name != algorithm:
                raise Unauthenticated(f"the JWT's key id {header.get('kid')!r} is not in the JWKS with {algorithm}")
            key = jwk.key
        else:
            accepted = (["HS256"] if s.jwt_hs256_secret else []) + (list(_ASYMMETRIC) if self._jwks else [])
            raise Unauthenticated(f"JWTs signed with {algorithm} are not accepted; accepted: {accepted or 'none'}")
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                options={"require": ["exp", "iss", "aud"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"the JWT's audience is not {s.jwt_audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"the JWT's issuer is not {s.jwt_issuer!r}") from None
        except jwt.MissingRequiredClaimError as error:
            raise Unauthenticated(f"the JWT has no '{error.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the JWT's signature does not verify") from None
        except jwt.PyJWTError as error:
            raise Unauthenticated(f"the JWT is not valid: {type(error).__name__}") from None


def _load_jwks(path: str) -> dict[str, jwt.PyJWK]:
    """The file's signing keys by key id."""
    keys = jwt.PyJWKSet.from_dict(json.loads(Path(path).read_text())).keys
    found = {key.key_id: key for key in keys if key.key_id and key.algorithm_name in _ASYMMETRIC}
    if not found:
        raise ValueError(f"{path}: no RS256 or ES256 key with a 'kid' and an 'alg'")
    return found

"""API keys: issued once, stored only as hashes in a key file, each mapped to a tenant.

A key reads `lh_<id>_<secret>`: the id (8 hex digits) names the key in the file, logs and error
messages and is not secret; the secret is 256 random bits. The file has one key per line:

    <id> sha256:<hex of SHA-256 of the whole key> <tenant> [label...]
    <id> sha256:<hex of SHA-256 of the whole key> operator:<name> [label...]

    webhook <tenant> whsec_<base64> [<default callback url>]

A tenant's key starts and reads that tenant's downloads. An operator's key has no tenant: it calls the
operator API (AdminService), and its name is logged with every change made with it.

A plain SHA-256 is enough (no slow hash): the keys are random, not passwords, so there is nothing
to guess. The server re-reads the file when it changes, so rotating is: `create` a new key for the
tenant, hand it out, `revoke` the old one; no restart.

    python -m server.apikeys --file keys.txt create TENANT [LABEL]   prints the new key once
    python -m server.apikeys --file keys.txt create-operator NAME [LABEL]
    python -m server.apikeys --file keys.txt revoke ID
    python -m server.apikeys --file keys.txt list
    python -m server.apikeys --file keys.txt webhook TENANT [URL]   prints the tenant's new signing secret once
    python -m server.apikeys --file keys.txt webhook-remove TENANT
    python -m server.apikeys webhook-secret                          prints a new secret for WEBHOOK_SECRET

A `webhook` line gives a tenant a webhook signing secret of its own (jobs/webhooks.py), and the URL
its jobs' endings go to when a request names none. Running `webhook` again for a tenant rotates its
secret. Workers sign with it, so they read this file too.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from jobs.watched_file import RELOAD_EVERY_S, WatchedFile
from jobs.webhooks import TENANT_LINE, AddressRule, new_secret, parse_tenant_webhooks, tenant_line

_KEY = re.compile(r"lh_([0-9a-f]{8})_[A-Za-z0-9_-]{43}")
# Tenants named by JWTs live apart from those of API keys: a token whose `sub` is "dev" must not read
# the jobs of the API-key tenant "dev".
JWT_TENANT_PREFIX = "jwt:"
# No ":", so a key's tenant can never be a JWT's (those are "jwt:<claim>", auth.py).
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
OPERATOR_PREFIX = "operator:"
_MAX_CHECKED_KEYS = 10_000


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    digest: str
    tenant: str  # "" for an operator's key
    label: str
    operator: str = ""  # the operator's name, for an operator's key


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id of a well-formed key, else None."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match else None


def new_key() -> tuple[str, str]:
    """(key id, key)."""
    key_id = secrets.token_hex(4)
    return key_id, f"lh_{key_id}_{secrets.token_urlsafe(32)}"


def parse(text: str, source: str = "the key file") -> dict[str, KeyEntry]:
    entries: dict[str, KeyEntry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.split(maxsplit=1)[0] == TENANT_LINE:  # a tenant's webhook: jobs/webhooks.py
            continue
        parts = line.split(maxsplit=3)
        owner = parts[2] if len(parts) >= 3 else ""
        operator = owner.removeprefix(OPERATOR_PREFIX) if owner.startswith(OPERATOR_PREFIX) else ""
        if (
            len(parts) < 3
            or not re.fullmatch(r"[0-9a-f]{8}", parts[0])
            or not re.fullmatch(r"sha256:[0-9a-f]{64}", parts[1])
            or not _TENANT.fullmatch(operator or owner)
        ):
            raise ValueError(f"{source}, line {number}: expected '<id> sha256:<hex> <tenant or operator:name> [label]'")
        tenant = "" if operator else owner
        entries[parts[0]] = KeyEntry(parts[0], parts[1].removeprefix("sha256:"), tenant, " ".join(parts[3:]), operator)
    return entries


def entry_line(key_id: str, key: str, tenant: str, label: str = "", operator: bool = False) -> str:
    """The key file's line for a tenant's key, or with `operator` for an operator named `tenant`."""
    if not _TENANT.fullmatch(tenant):
        raise ValueError(f"{tenant!r}: use 1 to 128 letters, digits and . _ @ -, starting with a letter or digit")
    owner = OPERATOR_PREFIX + tenant if operator else tenant
    return f"{key_id} sha256:{digest(key)} {owner}" + (f" {label}" if label else "")


class KeyFile:
    """The key file as the server sees it: looked up in memory, re-read when it changes."""

    def __init__(self, path: str) -> None:
        self._file: WatchedFile[dict[str, KeyEntry]] = WatchedFile(path, parse, {}, "API keys")
        # Keys already checked against the entries in `_checked_of`: every call carries one, and
        # parsing and hashing it each time was a few per cent of a GetStatus (BENCHMARKS.md). Emptied
        # when the file is read again, so a revocation still takes effect within RELOAD_EVERY_S.
        self._checked_keys: dict[str, KeyEntry] = {}
        self._file.load()
        self._checked_of = self._file.value

    def entry(self, key: str) -> KeyEntry | None:
        """The entry of a valid, unrevoked key, else None.

        The file is looked at every RELOAD_EVERY_S (so a revocation takes effect within that), and at
        once for a key it does not know (so a new key works at once; a stat costs a microsecond)."""
        self._file.refresh_due()
        entry = self._lookup(key)
        if entry is None and self._file.refresh():
            entry = self._lookup(key)
        return entry

    def _lookup(self, key: str) -> KeyEntry | None:
        if self._checked_of is not self._file.value:
            self._checked_keys, self._checked_of = {}, self._file.value
        entry = self._checked_keys.get(key)
        if entry is not None:
            return entry
        key_id = key_id_of(key)
        entry = self._checked_of.get(key_id) if key_id else None
        if entry is None or not hmac.compare_digest(entry.digest, digest(key)):
            return None
        if len(self._checked_keys) >= _MAX_CHECKED_KEYS:
            self._checked_keys = {}
        self._checked_keys[key] = entry
        return entry

    @property
    def configured(self) -> bool:
        return self._file.configured


def _rewrite(path: Path, lines: list[str]) -> None:
    """Replaces the file in one rename, so a server never reads it half written."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text("".join(f"{line}\n" for line in lines))
    temporary.chmod(0o600)
    temporary.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.apikeys", description="Manage Longhaul API keys.")
    parser.add_argument("--file", default=os.environ.get("API_KEYS_FILE", ""), help="the key file (API_KEYS_FILE)")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="issue a key for a tenant; prints it once")
    create.add_argument("tenant")
    create.add_argument("label", nargs="?", default="")
    create_operator = commands.add_parser("create-operator", help="issue an operator's key (AdminService); prints it once")
    create_operator.add_argument("tenant", metavar="name", help="who the operator is, as the logs name them")
    create_operator.add_argument("label", nargs="?", default="")
    revoke = commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    commands.add_parser("list", help="list key ids, tenants and labels, and tenants' webhooks")
    webhook = commands.add_parser("webhook", help="give a tenant a new webhook secret (prints it once) and default URL")
    webhook.add_argument("tenant")
    webhook.add_argument("url", nargs="?", default="", help="where its jobs' endings go when a request names none")
    webhook_remove = commands.add_parser("webhook-remove", help="remove a tenant's webhook secret and default URL")
    webhook_remove.add_argument("tenant")
    commands.add_parser("webhook-secret", help="print a new secret for the WEBHOOK_SECRET setting")
    args = parser.parse_args(argv)
    if args.command == "webhook-secret":
        print(new_secret())
        return 0
    if not args.file:
        parser.error("give --file or set API_KEYS_FILE")
    path = Path(args.file)
    lines = path.read_text().splitlines() if path.exists() else []
    entries = parse("\n".join(lines), str(path))
    webhooks = parse_tenant_webhooks("\n".join(lines), str(path))
    if args.command in ("create", "create-operator"):
        key_id, key = new_key()
        try:
            lines.append(entry_line(key_id, key, args.tenant, args.label, operator=args.command == "create-operator"))
        except ValueError as error:
            parser.error(str(error))
        _rewrite(path, lines)
        print(key)
    elif args.command == "revoke":
        if args.key_id not in entries:
            print(f"no key {args.key_id} in {path}", file=sys.stderr)
            return 1
        _rewrite(path, [line for line in lines if line.split(maxsplit=1)[:1] != [args.key_id]])
        print(f"revoked {args.key_id}; servers stop accepting it within {RELOAD_EVERY_S:.0f} s")
    elif args.command in ("webhook", "webhook-remove"):
        if args.command == "webhook-remove" and args.tenant not in webhooks:
            print(f"tenant {args.tenant} has no webhook in {path}", file=sys.stderr)
            return 1
        kept = [line for line in lines if line.split()[:2] != [TENANT_LINE, args.tenant]]
        if args.command == "webhook":
            if problem := _webhook_problem(args.tenant, args.url):
                parser.error(problem)
            secret = new_secret()
            kept.append(tenant_line(args.tenant, secret, args.url))
        _rewrite(path, kept)
        print(secret if args.command == "webhook" else f"removed the webhook of tenant {args.tenant}")
    else:
        for entry in entries.values():
            print(f"{entry.key_id}  {entry.tenant or OPERATOR_PREFIX + entry.operator}  {entry.label}")
        for tenant, hook in webhooks.items():
            print(f"webhook   {tenant}  {hook.default_url or '(no default URL)'}")
    return 0


def _webhook_problem(tenant: str, url: str) -> str | None:
    # A tenant that calls with JWTs is "jwt:" and its tenant claim (auth.py).
    if not _TENANT.fullmatch(tenant.removeprefix(JWT_TENANT_PREFIX)):
        return f"{tenant!r} is not a tenant name (a key's tenant, or jwt: and a JWT's tenant claim)"
    # Where the URL's host leads is the servers' and workers' rule (WEBHOOK_ALLOWED_HOSTS), not known here.
    return AddressRule("0.0.0.0/0,::/0,localhost").url_problem(url) if url else None


if __name__ == "__main__":
    sys.exit(main())

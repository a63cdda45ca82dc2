from __future__ import annotations

import pytest

from jobs.settings import ENV_VARS, Settings


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.presign_ttl_s == 900 and settings.job_ttl_s == 86_400 and settings.heartbeat_s == 15


def test_environment_overrides_with_types() -> None:
    settings = Settings.from_env(
        {"DOWNLOAD_DELAY_MIN_MS": "5", "DOWNLOAD_DELAY_MAX_MS": "9", "HEARTBEAT_INTERVAL_S": "0.5", "REDIS_URL": "redis://x"}
    )
    assert (settings.delay_min_ms, settings.delay_max_ms, settings.heartbeat_s) == (5, 9, 0.5)
    assert settings.redis_url == "redis://x"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOB_TTL_S": "soon"}, "JOB_TTL_S='soon' is not a valid int"),
        ({"DOWNLOAD_DELAY_MIN_MS": "10", "DOWNLOAD_DELAY_MAX_MS": "5"}, "DOWNLOAD_DELAY_MIN_MS"),
        ({"UPLOAD_PART_SIZE": "1024"}, "at least 5 MiB"),
        ({"TENANT_LIMITS": "acme=5"}, "TENANT_LIMITS entry 'acme=5'"),
        ({"TENANT_LIMITS": "=5/10"}, "write tenant=ACTIVE/PER_S"),
        ({"JWT_HS256_SECRET": "x" * 40}, "JWT_ISSUER and JWT_AUDIENCE"),
        ({"JWT_HS256_SECRET": "short", "JWT_ISSUER": "i", "JWT_AUDIENCE": "a"}, "at least 32 characters"),
        ({"PRESIGN_TTL_S": "700000"}, "7 days"),
        ({"TLS_CERT_FILE": "cert.pem"}, "TLS_KEY_FILE"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_every_variable_maps_to_a_field() -> None:
    fields = set(Settings.__dataclass_fields__)
    assert set(ENV_VARS.values()) <= fields


def test_tenants_can_have_limits_of_their_own() -> None:
    settings = Settings.from_env({"TENANT_LIMITS": "batch=50/1000, auth0|x=0/5", "TENANT_MAX_ACTIVE_JOBS": "2"})
    assert settings.limits_for("batch") == (50, 1000)
    assert settings.limits_for("auth0|x") == (0, 5)
    assert settings.limits_for("anyone") == (2, 50)

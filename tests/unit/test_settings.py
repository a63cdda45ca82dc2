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
    ],
)
def test_bad_values_are_refused_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_every_variable_maps_to_a_field() -> None:
    fields = set(Settings.__dataclass_fields__)
    assert set(ENV_VARS.values()) <= fields

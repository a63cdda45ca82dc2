"""Tenant names in keys and object paths: plain names stay readable, nothing else escapes its segment."""

from __future__ import annotations

import pytest

from jobs.storage import artifact_key
from jobs.tenants import tenant_slug
from server.apikeys import entry_line, new_key


@pytest.mark.parametrize("tenant", [".", "..", ".hidden", "-rf", "a/b", "jwt:dev", "x" * 65])
def test_names_that_could_break_out_of_a_path_segment_are_hashed(tenant: str) -> None:
    slug = tenant_slug(tenant)
    assert slug.startswith("~") and len(slug) == 33
    assert artifact_key("lh", slug, "job").split("/")[2] == slug


def test_plain_names_are_kept_as_they_are() -> None:
    assert tenant_slug("acme.billing_2-eu") == "acme.billing_2-eu"


@pytest.mark.parametrize("tenant", [".", "..", "-x", "jwt:dev", ""])
def test_the_key_file_refuses_tenants_that_are_not_plain_names(tenant: str) -> None:
    key_id, key = new_key()
    with pytest.raises(ValueError, match="starting with a letter or digit"):
        entry_line(key_id, key, tenant)

"""The README's settings table cannot go stale: every variable the code reads is documented."""

from __future__ import annotations

from devstack.services import ROOT
from jobs.settings import ENV_VARS


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [var for var in ENV_VARS if f"| `{var}` |" not in readme]
    assert missing == []

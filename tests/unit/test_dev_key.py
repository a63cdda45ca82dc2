"""The run command's development keys (a tenant's and an operator's): made once, and the key file they live
in keeps every other key."""

from __future__ import annotations

from pathlib import Path

from devstack.__main__ import Stack
from jobs.settings import Settings
from server.apikeys import KeyFile, entry_line, new_key


def credentials_of_a_run(data_dir: Path) -> Stack:
    stack = Stack(Settings(), data_dir, workers=1, envoy_port=0, envoy_admin_port=0)
    stack._credentials()  # noqa: SLF001 - the step of start() under test
    return stack


def test_keys_added_to_the_dev_key_file_survive_the_next_run(tmp_path: Path) -> None:
    first = credentials_of_a_run(tmp_path)
    key_file = Path(first.settings.api_keys_file)
    key_id, key = new_key()
    with key_file.open("a") as lines:
        lines.write(entry_line(key_id, key, "team-b", "made with server.apikeys") + "\n")

    second = credentials_of_a_run(tmp_path)
    assert second.dev_key == first.dev_key
    assert second.operator_key == first.operator_key
    keys = KeyFile(second.settings.api_keys_file)
    assert keys.entry(key).tenant == "team-b", "the added key still works"
    assert keys.entry(second.dev_key).tenant == "dev"
    assert keys.entry(second.operator_key).operator == "dev-operator"
    assert len(key_file.read_text().splitlines()) == 3, "the development keys are not written twice"

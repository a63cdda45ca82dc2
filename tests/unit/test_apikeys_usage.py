"""The key tool's usage, as its docstring shows it, runs as shown."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from server import apikeys


def test_each_usage_line_of_the_key_tool_works(tmp_path: Path) -> None:
    usage = re.findall(r"^    (python -m server\.apikeys .+?)(?:   .*)?$", apikeys.__doc__ or "", re.MULTILINE)
    assert [line.split()[5] for line in usage] == ["create", "create-operator", "revoke", "list"]
    key_id = ""
    for line in usage:
        words = shlex.split(line.replace("TENANT [LABEL]", "acme billing").replace("NAME [LABEL]", "alice").replace("ID", key_id))
        result = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, cwd=tmp_path, timeout=30)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        key_id = key_id or apikeys.key_id_of(result.stdout.strip()) or ""
    keys = (tmp_path / "keys.txt").read_text()
    assert key_id and key_id not in keys, "created, then revoked"
    assert " operator:alice" in keys, "the operator's key stays"

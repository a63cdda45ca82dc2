"""The key tool's usage, as its docstring shows it, runs as shown."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from server import apikeys


def test_each_usage_line_of_the_key_tool_works(tmp_path: Path) -> None:
    usage = re.findall(r"^    (python -m server\.apikeys .+?)(?:   .*)?$", apikeys.__doc__ or "", re.MULTILINE)
    commands = [re.findall(r"server\.apikeys (?:--file \S+ )?(\S+)", line)[0] for line in usage]
    assert commands == ["create", "create-operator", "revoke", "list", "webhook", "webhook-remove", "webhook-secret"]
    key_id = ""
    printed: dict[str, str] = {}
    for command, line in zip(commands, usage, strict=True):
        line = line.replace("TENANT [LABEL]", "acme billing").replace("NAME [LABEL]", "alice").replace("ID", key_id)
        line = line.replace("TENANT [URL]", "acme https://hooks.example.com/longhaul").replace("remove TENANT", "remove acme")
        words = shlex.split(line)
        result = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, cwd=tmp_path, timeout=30)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        key_id = key_id or apikeys.key_id_of(result.stdout.strip()) or ""
        printed[command] = result.stdout.strip()
        if command == "webhook":
            assert (tmp_path / "keys.txt").read_text().count(f"webhook acme {printed[command]} https://hooks") == 1
    keys = (tmp_path / "keys.txt").read_text()
    assert key_id and key_id not in keys, "created, then revoked"
    assert " operator:alice" in keys, "the operator's key stays"
    assert "webhook" not in keys, "given a webhook, then removed"
    for command in ("webhook", "webhook-secret"):
        assert printed[command].startswith("whsec_") and len(printed[command]) == 50, command


def test_a_jwt_tenant_can_have_a_webhook_and_a_malformed_name_cannot(tmp_path: Path, capsys) -> None:
    keys = tmp_path / "keys.txt"
    assert apikeys.main(["--file", str(keys), "webhook", "jwt:acme-billing", "https://hooks.example.com/x"]) == 0
    secret = capsys.readouterr().out.strip()
    assert keys.read_text() == f"webhook jwt:acme-billing {secret} https://hooks.example.com/x\n"
    for tenant in ("jwt:", "two words", "acme:x"):
        with pytest.raises(SystemExit):
            apikeys.main(["--file", str(keys), "webhook", tenant])
    assert "not a tenant name" in capsys.readouterr().err

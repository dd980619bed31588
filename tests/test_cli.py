"""The command line fails with one clear line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import load_settings


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True
    )


def test_verify_on_a_file_that_is_not_an_audit_log(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    out = cli("audit", "verify", str(junk))
    assert out.returncode == 2
    assert "cannot read as an audit log" in out.stderr and "Traceback" not in out.stderr


def test_serve_without_profiles_says_what_is_missing(tmp_path: Path) -> None:
    out = cli("serve", "--data-dir", str(tmp_path))
    assert out.returncode == 1 and "cannot start" in out.stderr
    assert "Traceback" not in out.stderr


def test_short_hash_keys_are_refused_at_start(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path, hash_key="00ff")
    with pytest.raises(ValidationError, match="at least 16 bytes"):
        settings.load_secrets()

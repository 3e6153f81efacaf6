"""Shared fixtures: a real store in a temp folder, the repo root, and a CLI runner that uses this tree's code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ILLUSTFEED_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture
def store(tmp_path):
    from storage import Store

    with Store.open(tmp_path / "data") as opened:
        yield opened


def cli_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ILLUSTFEED_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra or {})
    return env


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `illustfeed ARGS` in a subprocess on this checkout's code."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

COMMANDS = ["ingest", "search", "predict", "stats", "doctor", "reindex", "remove", "show"]


ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "manage.py", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for c in COMMANDS:
        assert c in r.stdout


def test_bad_flag_is_one_line_exit_2():
    r = run_cli("--bogus")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--bogus" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("stats", "--no-such-flag")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

COMMANDS = ["ingest", "search", "predict", "stats", "doctor", "reindex", "remove", "show"]


ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "manage.py", *args], capture_output=True, text=True, cwd=cwd)


def listed_commands(help_text: str) -> list[str]:
    """The names in the Commands panel of a help text (first word of the panel's lines that start one)."""
    panel = help_text.split("Commands", 1)[1] if "Commands" in help_text else ""
    return re.findall(r"^│ ([a-z][a-z-]*)\s", panel, flags=re.MULTILINE)


def test_help_lists_exactly_the_commands():
    from a2v_search.cli import app

    r = run_cli("--help")
    assert r.returncode == 0
    registered = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    listed = listed_commands(r.stdout)
    assert listed == registered and set(COMMANDS) <= set(listed)
    assert listed_commands("│ --help  Show this message\n") == []  # the parser itself finds nothing in other text
    for name in ("ingest", "doctor"):
        r = run_cli(name, "--help")
        assert r.returncode == 0 and f"Usage: a2v {name}" in " ".join(r.stdout.split())


def test_ctrl_c_is_one_line_exit_130(monkeypatch):
    """An interrupted command says so in one line and exits 130 (typer turns the KeyboardInterrupt into that code)."""
    from helpers import run_main

    from a2v_search import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_api", interrupted)
    code, out, err = run_main("stats")
    assert (code, out, err) == (130, "", "error: interrupted\n")


def test_bad_flag_is_one_line_exit_2():
    r = run_cli("--bogus")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--bogus" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("stats", "--no-such-flag")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0

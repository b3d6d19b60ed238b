"""What make does: make run installs only what SkyDeck runs on; nothing the suite runs flushes a shared Redis."""

import re
import subprocess
from pathlib import Path

from tests.support import ROOT


def _dry_run(target, tmp_path):
    """The commands ``make <target>`` would run for a fresh virtualenv (printed, not run)."""
    out = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_run_installs_requirements_txt_only(tmp_path):
    run = _dry_run("run", tmp_path)
    assert re.search(r"pip install -q -r requirements\.txt", run)
    assert "requirements-dev.txt" not in run


def test_make_test_and_lint_add_the_dev_requirements(tmp_path):
    for target in ("test", "lint"):
        commands = _dry_run(target, tmp_path)
        assert "-r requirements.txt" in commands and "-r requirements-dev.txt" in commands, target


def test_nothing_the_suite_runs_flushes_a_redis_it_may_share():
    sources = [*ROOT.joinpath("tests").rglob("*.py"), ROOT / "Makefile", ROOT / ".ci" / "run"]
    for path in sources:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text().lower()
        assert "flushdb" not in text and "flushall" not in text and "flush_db" not in text, path

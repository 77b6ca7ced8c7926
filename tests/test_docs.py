"""The README and the docs match the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_of(example: str) -> str:
    """An example's code without its module docstring and ``__future__`` import."""
    text = (ROOT / "examples" / example).read_text(encoding="utf-8")
    text = re.sub(r'^""".*?"""\n', "", text, count=1, flags=re.S)
    text = text.replace("from __future__ import annotations\n", "")
    return text.strip()


def test_readme_quick_start_is_the_example() -> None:
    assert _code_of("quickstart.py") in README


def test_readme_starts_with_the_two_commands() -> None:
    head = README.split("## ", 1)[0]
    assert "pip install -e . && python examples/local_cluster.py" in head
    assert "pip install -e '.[test]' && python -m pytest" in head


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -e '.[test]' && python -m pytest\n" in ci


def test_api_reference_is_up_to_date() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_api  # type: ignore[import-not-found, unused-ignore]
    finally:
        sys.path.pop(0)
    current = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert gen_api.render() == current, "docs/api.md is stale: run python docs/gen_api.py"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_runs(backend: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "local_cluster.py"), "--backend", backend, "--rounds", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("known to all 4 survivors") == 2
    assert "failover over 2 rounds" in result.stdout


def test_quick_start_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "holds its lease" in result.stdout

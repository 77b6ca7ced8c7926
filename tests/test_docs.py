"""The README and the docs match the code."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _source_of(example: str, start: str, end: str) -> str:
    """The part of an example from the line starting with *start* up to (not including) the one with *end*."""
    text = (ROOT / "examples" / example).read_text(encoding="utf-8")
    return text[text.index(start) : text.index(end)].strip()


def test_readme_custom_transport_is_the_example() -> None:
    assert _source_of("udp_transport.py", "class UdpNode:", "SIZE = 3") in README


def test_readme_virtual_time_is_the_example() -> None:
    assert _code_of("virtual_time.py") in README


def test_readme_fixture_is_the_projects_own() -> None:
    fence = "```python\nimport pytest\nfrom trio.testing import MockClock\n"
    snippet = README[README.index(fence) + len("```python\n") :]
    snippet = snippet[: snippet.index("```")].strip()
    conftest = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8")
    assert snippet.split("\n\n\n", 1)[1] in conftest


def test_readme_safety_properties_are_the_checkers_rules() -> None:
    """The numbered list under "Safety guarantees" names exactly ``RULES``, in order, one item each."""
    from almost_raft.testing import RULES

    section = README.split("## Safety guarantees", 1)[1].split("\n## ", 1)[0]
    items = re.findall(r"^\d+\. (.*?)(?=^\d+\. |^\S|\Z)", section, flags=re.M | re.S)
    named = [re.findall(r"\(`([^`]+)`\)\.?\s*$", item.strip())[0] for item in items]
    assert named == list(RULES)
    assert f"The {['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven'][len(RULES)]} rules above" in README


SPEC = (ROOT / "docs" / "specification.md").read_text(encoding="utf-8")


def test_the_specification_covers_what_users_rely_on() -> None:
    headings = re.findall(r"^## (.+)$", SPEC, flags=re.M)
    for wanted in [
        "Messages",
        "Timers",
        "Pre-vote",
        "Voting and stickiness",
        "Winning and views",
        "Heartbeats and check-quorum",
        "Lease",
        "Transfer",
        "Membership",
        "Terms have no dead end",
        "I/O and persistence",
        "Failure handling",
        "Safety properties",
    ]:
        assert wanted in headings, wanted
    for message in ("RequestVote", "VoteResponse", "Heartbeat", "HeartbeatResponse", "TimeoutNow"):
        assert f"| `{message}` |" in SPEC, message
    terms = SPEC.split("## Terms have no dead end", 1)[1].split("\n## ", 1)[0]
    assert "MAX_TERM" in terms
    assert "MAX_TERM_STEP" in terms


def test_the_specifications_safety_properties_are_the_checkers_rules() -> None:
    from almost_raft.testing import RULES

    section = SPEC.split("## Safety properties", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\d+\. \*\*[^*]+\*\* \(`([^`]+)`\)", section, flags=re.M) == list(RULES)


def test_nothing_points_to_a_document_the_project_does_not_ship() -> None:
    """The specification ships as docs/specification.md; no file names the internal design notes instead."""
    needle = re.compile(r"\b" + "DES" + r"IGN\b")
    skip = {".git", ".venv", ".venv-ci", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    offenders = []
    for path in ROOT.rglob("*"):
        parts = set(path.relative_to(ROOT).parts)
        if parts & skip or any(p.endswith(".egg-info") for p in parts) or not path.is_file():
            continue
        if path.suffix in {".py", ".md", ".toml", ".cfg", ".txt", ".rst"} or path.name == "run":
            for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if needle.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
    assert "docs/specification.md" in README


def test_readme_starts_with_the_two_commands() -> None:
    head = README.split("## ", 1)[0]
    assert "pip install -e . && python examples/local_cluster.py" in head
    assert "pip install -e '.[test]' && python -m pytest" in head


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -e '.[test]' && python -m pytest\n" in ci


def _gen_api() -> Any:
    """docs/gen_api.py, imported."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_api  # type: ignore[import-not-found, unused-ignore]
    finally:
        sys.path.pop(0)
    return gen_api


def test_api_reference_is_up_to_date() -> None:
    current = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert _gen_api().render() == current, "docs/api.md is stale: run python docs/gen_api.py"


def _api_entries() -> dict[tuple[str, str], str]:
    """Every function and method in docs/api.md: ``(owner, name) -> mark`` ("async ", "async with " or "")."""
    entries: dict[tuple[str, str], str] = {}
    module = owner = ""
    for line in (ROOT / "docs" / "api.md").read_text(encoding="utf-8").splitlines():
        if heading := re.match(r"## `([\w.]+)`$", line):
            module = owner = heading[1]
        elif cls := re.match(r"### class `(\w+)", line):
            owner = f"{module}.{cls[1]}"
        elif func := re.match(r"### `(async with |async )?(\w+)\(", line):
            owner = module
            entries[(module, func[2])] = func[1] or ""
        elif member := re.match(r"- `(async with |async )?(\w+)\(", line):
            entries[(owner, member[2])] = member[1] or ""
    return entries


def _expected_mark(func: object) -> str:
    if inspect.iscoroutinefunction(func):
        return "async "
    if inspect.isasyncgenfunction(getattr(func, "__wrapped__", None)):
        return "async with "
    return ""


def test_api_reference_marks_every_coroutine() -> None:
    """Each coroutine function (to ``await``, or to write with ``async def`` for a protocol) is marked ``async``.

    So is each async context manager (``async with``); nothing else is.
    """
    entries = _api_entries()
    expected: dict[tuple[str, str], str] = {}
    for module_name in _gen_api().MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                for member_name, member in vars(obj).items():
                    func = member.__func__ if isinstance(member, classmethod) else member
                    if not member_name.startswith("_") and inspect.isfunction(func) and member_name != "validate":
                        expected[(f"{module_name}.{name}", member_name)] = _expected_mark(func)
            elif inspect.isfunction(obj) or inspect.isfunction(getattr(obj, "__wrapped__", None)):
                expected[(module_name, name)] = _expected_mark(obj)
    assert entries == expected
    coroutines = {key for key, mark in expected.items() if mark == "async "}
    # The ones a new user met unmarked: a Storage and a Node are written with async def.
    for key in [
        ("almost_raft.Storage", "load"),
        ("almost_raft.Storage", "save"),
        ("almost_raft.Node", "send_message"),
        ("almost_raft.RaftElectionState", "wait_changed"),
        ("almost_raft.testing.LocalCluster", "crash"),
        ("almost_raft.testing.LocalCluster", "wait_for_leader"),
        ("almost_raft", "raft_election"),
    ]:
        assert key in coroutines, key


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


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_udp_transport_example_elects_a_leader_over_real_sockets(backend: str) -> None:
    """``examples/udp_transport.py``: the README's transport of your own, 3 nodes over UDP on 127.0.0.1."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "udp_transport.py"), "--backend", backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "over UDP, all 3 nodes agree" in result.stdout
    assert result.stderr == "", "a send failed (BusyResourceError without the lock?)"


def test_virtual_time_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "virtual_time.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ms of virtual time" in result.stdout
    assert "simulated:" in result.stdout


def test_the_trio_extra_installs_trio() -> None:
    """``pip install -e '.[trio]'`` is what the README says before ``--backend trio``, and it brings trio."""
    meta = importlib.metadata.metadata("almost_raft")
    assert "trio" in (meta.get_all("Provides-Extra") or [])
    requires = [r.replace(" ", "") for r in meta.get_all("Requires-Dist") or []]
    assert any(r.startswith("trio>=") and r.endswith('extra=="trio"') for r in requires), requires
    assert "pip install -e '.[trio]' && python examples/local_cluster.py --backend trio" in README


def test_the_demo_without_trio_says_which_extra_to_install() -> None:
    """``--backend trio`` without trio installed: one line naming the extra, not a traceback."""
    blocked = (
        "import runpy, sys; sys.modules['trio'] = None; "
        f"sys.argv = ['local_cluster.py', '--backend', 'trio']; runpy.run_path({str(ROOT / 'examples' / 'local_cluster.py')!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "pip install -e '.[trio]'" in result.stderr
    assert "Traceback" not in result.stderr


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

"""The operator options of ``python -m almost_raft``: parsed and checked, with one-line errors and status 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from almost_raft._cli import parse_args
from almost_raft._cli_ops import split_exec
from tests.network._procs import free_ports

BASE = ["--id", "a", "--listen", "127.0.0.1:7001", "--peer", "b=127.0.0.1:7002", "--peer", "c=127.0.0.1:7003"]


def test_exec_and_status_options() -> None:
    opts = parse_args(
        [
            *BASE,
            "--election-timeout",
            "0.4",
            "--status-listen",
            "127.0.0.1:9100",
            "--advertise-url",
            "http://a.example:8000/",
            "--peer-url",
            "b=http://b.example:8000",
            "--exec",
            "--",
            sys.executable,
            "-c",
            "print('--id')",
        ]
    )
    ops = opts.ops
    assert opts.node_id == "a"  # arguments after --exec belong to the command
    assert ops.exec_command == (sys.executable, "-c", "print('--id')")
    assert ops.kill_after == pytest.approx(0.1)  # T/4 by default
    assert ops.stop_timeout == 10.0
    assert ops.on_exit == "restart"
    assert ops.status_listen == ("127.0.0.1", 9100)
    assert ops.advertise_url == "http://a.example:8000"
    assert ops.peer_urls == (("b", "http://b.example:8000"),)
    assert ops.wanted


def test_without_operator_options_nothing_changes() -> None:
    opts = parse_args(BASE)
    assert not opts.ops.wanted
    assert opts.ops.exec_command == ()


def test_split_exec() -> None:
    assert split_exec(["--id", "a"]) == (["--id", "a"], None)
    assert split_exec(["--id", "a", "--exec", "--", "ls", "-l"]) == (["--id", "a", "--exec"], ("ls", "-l"))
    assert split_exec(["--exec", "ls", "--exec"]) == (["--exec"], ("ls", "--exec"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*BASE, "--exec"], "needs a command"),
        ([*BASE, "--exec", "--"], "needs a command"),
        ([*BASE, "--exec", "--", "no-such-command-xyz"], "command not found"),
        ([*BASE, "--exec", "--", "/etc/passwd"], "not executable"),
        ([*BASE, "--kill-after", "0.1", "--exec", "--", "true"], "below the election timeout less one heartbeat"),
        ([*BASE, "--kill-after", "0.01"], "need --exec"),
        ([*BASE, "--on-exit", "stay"], "need --exec"),
        ([*BASE, "--on-exit", "later", "--exec", "--", "true"], "invalid choice"),
        ([*BASE, "--peer-url", "d=http://d:1"], "no --peer d="),
        ([*BASE, "--peer-url", "b=ftp://b"], "not an http"),
        ([*BASE, "--advertise-url", "b:80"], "not an http"),
        ([*BASE, "--status-listen", "9100"], "is not HOST:PORT"),
        ([*BASE, "--stop-timeout", "0"], "positive number of seconds"),
    ],
    ids=[
        "exec-alone", "exec-dashes", "not-found", "not-executable", "kill-after-too-long", "kill-after-no-exec",
        "on-exit-no-exec", "on-exit-choice", "peer-url-unknown", "peer-url-scheme", "advertise-url", "status-listen",
        "stop-timeout",
    ],
)  # fmt: skip
def test_bad_operator_options_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "almost_raft", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_start_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    port, taken = free_ports(2)
    with socket_bound(taken):
        result = run_cli(
            "--id", "a", "--listen", f"127.0.0.1:{port}", "--peer", "b=127.0.0.1:1", "--status-listen", f"127.0.0.1:{taken}"
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cannot listen" in lines[0]
    assert "status" in lines[0]
    bad = tmp_path / "a.state"
    bad.write_text("garbage")
    result = run_cli(
        "--id", "a", "--listen", "127.0.0.1:0", "--peer", "b=127.0.0.1:1", "--storage", str(bad), "--exec", "--", "true"
    )
    assert result.returncode == 2, result.stderr
    assert "cannot load the storage" in result.stderr.strip().splitlines()[-1]


@contextmanager
def socket_bound(port: int) -> Iterator[None]:
    """Hold a TCP port on 127.0.0.1, listening, for the duration of a ``with``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield

"""``python -m almost_raft``: the command line is checked, with clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from almost_raft._cli import parse_address, parse_args

BASE = ["--id", "a", "--listen", "127.0.0.1:7001"]


def test_good_command_line() -> None:
    opts = parse_args([*BASE, "--peer", "b=127.0.0.1:7002", "--peer", "c=[::1]:7003", "--election-timeout", "0.2"])
    assert opts.node_id == "a"
    assert opts.listen == ("127.0.0.1", 7001)
    assert opts.peers == (("b", "127.0.0.1", 7002), ("c", "::1", 7003))
    assert opts.election_timeout == 0.2
    assert opts.heartbeat_interval == pytest.approx(0.2 / 3)
    assert opts.message_timeout == opts.heartbeat_interval
    assert opts.min_nodes == 3  # the whole cluster, the safe default
    assert opts.json is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--id", "a", "--listen", "7001"], "is not HOST:PORT"),
        (["--id", "a", "--listen", "localhost:70x1"], "is not a number"),
        (["--id", "a", "--listen", "localhost:70001"], "outside 0..65535"),
        (["--id", "a", "--listen", "::1:7001"], "brackets"),
        ([*BASE, "--peer", "b"], "is not ID=HOST:PORT"),
        ([*BASE, "--peer", "b=127.0.0.1"], "is not HOST:PORT"),
        ([*BASE, "--peer", "b=127.0.0.1:7002", "--peer", "b=127.0.0.1:7003"], "duplicate node id 'b'"),
        ([*BASE, "--peer", "a=127.0.0.1:7002"], "cannot be its own peer"),
        ([*BASE, "--election-timeout", "-1"], "positive number of seconds"),
        ([*BASE, "--election-timeout", "0.1", "--heartbeat-interval", "0.08"], "at most half"),
        ([*BASE, "--tls-cert", "x.pem"], "needs all of"),
        ([*BASE, "--min-nodes", "0"], "at least 1"),
        (["--id", "", "--listen", "127.0.0.1:1"], "must not be empty"),
    ],
    ids=[
        "no-port", "bad-port", "port-range", "ipv6-brackets", "peer-no-address", "peer-no-port", "duplicate-id",
        "own-id", "negative-timeout", "heartbeat-too-long", "partial-tls", "min-nodes", "empty-id",
    ],
)  # fmt: skip
def test_bad_command_lines_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_parse_address() -> None:
    assert parse_address("example.org:80") == ("example.org", 80)
    assert parse_address("[fe80::1]:0") == ("fe80::1", 0)
    with pytest.raises(ValueError, match="not an IPv6 address"):
        parse_address("[nope]:1")


def test_the_module_runs_and_reports_errors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "almost_raft", *BASE, "--peer", "a=127.0.0.1:7002"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "a node cannot be its own peer" in result.stderr
    assert result.stdout == ""

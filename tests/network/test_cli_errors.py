"""``python -m almost_raft`` as a real child process: every error is one clear line and a documented exit status.

Errors at start (exit status 2): arguments (the usage line and the error,
nothing more), a storage file that cannot be read or written, an address
already in use, TLS files that are missing or not certificates.  A save that
fails while running (exit status 3): one ERROR line naming the file and the
errno, then the ``--json`` ``stopped`` line with the reason.  Each failure is
real: a directory that does not exist, a file where a directory should be, a
port held by another socket, a full or read-only file system (a tmpfs mounted
in the node's own mount namespace), a state file replaced by a directory.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from almost_raft._cli import EXIT_OK, EXIT_STORAGE, EXIT_USAGE

from ._procs import ProcCluster, free_ports

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``python -m almost_raft ARGS`` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "almost_raft", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def base() -> list[str]:
    """A node's arguments with a free port and a peer (no "no --peer" warning)."""
    listen, peer = free_ports(2)
    return ["--id", "a", "--listen", f"127.0.0.1:{listen}", "--peer", f"b=127.0.0.1:{peer}"]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("almost_raft: error: "), lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# ------------------------------------------------------------------ at start


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_storage_directory_that_does_not_exist(base: list[str], tmp_path: Path, backend: str) -> None:
    path = tmp_path / "missing" / "state.json"
    result = run_cli(*base, "--storage", str(path), "--backend", backend)
    assert_one_line_error(result, "--storage", str(path), "does not exist", "Errno 2")


def test_a_storage_directory_that_is_a_file(base: list[str], tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    path = tmp_path / "plain" / "state.json"
    result = run_cli(*base, "--storage", str(path))
    assert_one_line_error(result, "--storage", str(path), "cannot create a file", "Not a directory")


def test_a_corrupt_state_file(base: list[str], tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "term": 3')
    result = run_cli(*base, "--storage", str(path))
    assert_one_line_error(result, "--storage", str(path), "corrupt almost_raft state file")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_port_in_use(tmp_path: Path, backend: str) -> None:
    (peer,) = free_ports(1)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run_cli(
            "--id", "a", "--listen", f"127.0.0.1:{port}", "--peer", f"b=127.0.0.1:{peer}", "--backend", backend
        )
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "Address already in use")


def test_a_missing_tls_file(base: list[str], tmp_path: Path) -> None:
    real = tmp_path / "x.pem"
    real.write_text("")
    missing = tmp_path / "no-such-key.pem"
    result = run_cli(*base, "--tls-cert", str(real), "--tls-key", str(missing), "--tls-ca", str(real))
    assert_one_line_error(result, "--tls-key", str(missing), "No such file")


def test_tls_files_that_are_not_certificates(base: list[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    result = run_cli(*base, "--tls-cert", str(junk), "--tls-key", str(junk), "--tls-ca", str(junk))
    assert_one_line_error(result, "cannot load the TLS files", "--tls-ca", str(junk))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "a"], "the following arguments are required: --listen"),
        (["--id", "a", "--listen", "127.0.0.1:1", "--peer", "b=x:1", "--peer", "b=y:2"], "duplicate node id 'b'"),
        (["--id", "a", "--listen", "127.0.0.1:1", "--election-timeout", "soon"], "is not a number of seconds"),
        (["--id", "a", "--listen", "127.0.0.1:1", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
    ids=["missing-option", "duplicate-peer", "not-a-number", "unknown-option"],
)
def test_bad_arguments_print_the_usage_line_and_the_error_only(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == EXIT_USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("usage: python -m almost_raft --id ID --listen HOST:PORT")
    assert lines[1].startswith("python -m almost_raft: error: ")
    assert message in lines[1]
    assert result.stdout == ""


def test_help_documents_the_exit_statuses() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    epilog = result.stdout.split("exit status:", 1)[1]
    for code in (EXIT_OK, EXIT_USAGE, EXIT_STORAGE, 130):
        assert f"\n  {code} " in epilog, code


def test_no_peer_is_one_warning_line(tmp_path: Path) -> None:
    """Started without ``--peer``: one warning line, and the node runs (a cluster of one leads alone)."""
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "almost_raft", "--id", "solo", "--listen", f"127.0.0.1:{port}", "--json"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line)["leader_id"] == "solo":
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == EXIT_OK
    assert json.loads(out.splitlines()[-1])["event"] == "stopped"
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("almost_raft: warning: no --peer given")


# --------------------------------------------------------- a save that fails


def _mount_namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", 'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d"'],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


@pytest.fixture(scope="module")
def mount_namespaces() -> None:
    if not _mount_namespaces_work():
        pytest.skip("needs unshare/nsenter and the right to mount a tmpfs in a new mount namespace (root)")


Breaker = Callable[[ProcCluster, int], None]


def _replace_by_directory(cluster: ProcCluster, pid: int) -> None:
    path = cluster.storage_path("a")
    path.unlink()
    path.mkdir()
    (path / "keep").write_text("")  # a non-empty directory: the rename over it fails


def _fill_up(cluster: ProcCluster, pid: int) -> None:
    # Inside the node's mount namespace the storage directory is a 64 KiB tmpfs.
    subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "sh", "-c", f'cat /dev/zero > "{cluster.workdir}/fill"'],
        capture_output=True,
        timeout=30,
        check=False,  # cat ends with ENOSPC: the point
    )


def _remount_read_only(cluster: ProcCluster, pid: int) -> None:
    subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "mount", "-o", "remount,ro", str(cluster.workdir)],
        capture_output=True,
        timeout=30,
        check=True,
    )


@pytest.fixture(
    params=[
        pytest.param(("EISDIR", 21, _replace_by_directory, False, "asyncio"), id="replaced-by-directory"),
        pytest.param(("EISDIR", 21, _replace_by_directory, False, "trio"), id="replaced-by-directory-trio"),
        pytest.param(("ENOSPC", 28, _fill_up, True, "asyncio"), id="disk-full"),
        pytest.param(("EROFS", 30, _remount_read_only, True, "trio"), id="read-only-trio"),
    ]
)
def breakage(request: pytest.FixtureRequest) -> tuple[str, int, Breaker, bool, str]:
    """How node a's storage breaks: the errno's name and number, the breaker, whether it needs a tmpfs, the backend."""
    name, code, breaker, needs_tmpfs, backend = request.param
    if needs_tmpfs:
        request.getfixturevalue("mount_namespaces")
    return name, code, breaker, needs_tmpfs, backend


@pytest.mark.slow
def test_a_failed_save_stops_the_node_with_one_error_line_and_the_stopped_line(
    procs: Callable[..., ProcCluster], tmp_path: Path, breakage: tuple[str, int, Breaker, bool, str]
) -> None:
    """Two nodes; node a's storage breaks after start; a hand-over makes a save a term: a stops, exit 3."""
    name, code, breaker, needs_tmpfs, backend = breakage
    workdir = tmp_path / "a-dir"
    workdir.mkdir()
    cluster = procs(["a", "b"], election_timeout=0.15, storage=True, extra=["--backend", backend])
    cluster.workdir = workdir  # node a's storage and stderr live in its own directory
    a = cluster["a"]
    a.stderr_path = tmp_path / "a.stderr"
    cluster.start("b")
    # b listens before a starts: a's first connection then succeeds (no "unreachable" notice).
    cluster.wait_for(lambda: cluster["b"].leader_records(), 20, "b to start")
    if needs_tmpfs:
        # Node a in a mount namespace of its own, its storage directory a 64 KiB tmpfs there.
        script = 'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"'
        a.start(cluster.args("a"), prefix=["unshare", "--mount", "sh", "-c", script, str(workdir)])
    else:
        cluster.start("a")
    _, leader = cluster.wait_agreed(timeout=20)
    breaker(cluster, a.pid)
    cluster[leader].signal(signal.SIGUSR1)  # the hand-over raises the term: node a must save it
    assert a.wait(20) == EXIT_STORAGE
    lines = a.stderr_text().splitlines()
    # Only the transport's notices about reaching b may stand beside the error line.
    errors = [line for line in lines if not line.startswith("----- start") and "reachable" not in line]
    assert len(errors) == 1, lines
    assert "Traceback" not in a.stderr_text()
    (error,) = errors
    assert " ERROR almost_raft: node 'a' term " in error
    assert str(cluster.storage_path("a")) in error
    assert f"[Errno {code} {name}]" in error
    stopped = a.stopped_record()
    assert stopped is not None, a.records
    assert stopped["reason"] == "storage_failed"
    assert str(cluster.storage_path("a")) in stopped["error"]
    assert f"Errno {code}" in stopped["error"]
    assert a.records[-1] is stopped
    assert cluster["b"].running, "the peer goes on"

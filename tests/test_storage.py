"""``MemoryStorage`` and ``FileStorage``, on both anyio backends.

docs/specification.md ("I/O and persistence"): the storage defaults to
memory; ``FileStorage`` writes atomically and fsyncs; a restarted node comes
back with the saved term and vote.  ``FileStorage.load`` raises ``ValueError`` for a file it cannot
understand: a corrupt file is never read as "term 0, no vote", which would
let a restarted node vote twice in one term.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from almost_raft import FileStorage, HardState, LeaderChanged, MemoryStorage, RaftElectionState, raft_election
from almost_raft._messages import MAX_TERM


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both backends, trio on its real clock here.

    ``FileStorage`` works in a worker thread, and trio's ``MockClock`` does not
    count a thread as activity: with ``autojump_threshold=0`` it would jump
    virtual time to the next deadline (the test's ``fail_after``) while a save
    is on disk.  These tests are short in real time anyway.
    """
    return str(request.param)


STATES = [HardState(0), HardState(1, "b"), HardState(7, 3), HardState(2**40, "nöde-ü"), HardState(5, 0)]


async def test_memory_storage_round_trip() -> None:
    """``MemoryStorage``: ``None`` until saved, then the last state saved."""
    storage = MemoryStorage()
    assert await storage.load() is None
    for n, hs in enumerate(STATES, 1):
        await storage.save(hs)
        assert await storage.load() == hs
        assert storage.saves == n
    assert await MemoryStorage(HardState(2, 1)).load() == HardState(2, 1)


async def test_file_storage_round_trip(tmp_path: Path) -> None:
    """``FileStorage``: a missing file loads ``None``; each save is what a fresh reader then loads."""
    path = tmp_path / "state.json"
    assert await FileStorage(path).load() is None
    storage = FileStorage(str(path))
    for hs in STATES:
        await storage.save(hs)
        assert await storage.load() == hs
        assert await FileStorage(path).load() == hs, "read from the file, not from a cache"


async def test_a_missing_directory_is_an_error_at_load(tmp_path: Path) -> None:
    """A directory that does not exist fails ``load`` with a clear ``FileNotFoundError``, not the first vote."""
    path = tmp_path / "nope" / "state.json"
    with pytest.raises(FileNotFoundError, match=r"state\.json.*directory .*nope.* does not exist") as info:
        await FileStorage(path).load()
    assert str(path) in str(info.value)
    assert not (tmp_path / "nope").exists(), "load creates nothing"


async def test_a_directory_that_cannot_hold_files_is_an_error_at_load(tmp_path: Path) -> None:
    """A "directory" that is a file (``ENOTDIR``; root ignores permission bits, this it cannot) fails ``load``."""
    (tmp_path / "plain-file").write_bytes(b"")
    path = tmp_path / "plain-file" / "state.json"
    with pytest.raises(NotADirectoryError, match=r"state\.json.*cannot create a file in"):
        await FileStorage(path).load()


async def test_load_leaves_no_temporary_file(tmp_path: Path) -> None:
    """The write check at ``load`` creates the temporary file and removes it again."""
    path = tmp_path / "state.json"
    assert await FileStorage(path).load() is None
    assert os.listdir(tmp_path) == []
    await FileStorage(path).save(HardState(2, "b"))
    assert await FileStorage(path).load() == HardState(2, "b")
    assert os.listdir(tmp_path) == ["state.json"]


async def test_a_storage_that_cannot_be_written_fails_start_with_a_plain_exception(tmp_path: Path) -> None:
    """``await tg.start(raft_election, state)`` raises the storage's ``OSError`` itself, not an exception group."""
    state, close = _single_node(FileStorage(tmp_path / "nope" / "a.json"))
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                with pytest.raises(FileNotFoundError, match=r"a\.json") as info:
                    await tg.start(raft_election, state)
                assert type(info.value) is FileNotFoundError
    finally:
        close()
    assert state.term == 0


async def test_a_failed_save_names_the_file_and_keeps_the_errno(tmp_path: Path) -> None:
    """A save that fails at run time raises ``OSError`` with the state file's name and the system's errno.

    The target replaced by a directory makes the rename fail for real (``EISDIR``).
    """
    path = tmp_path / "state.json"
    storage = FileStorage(path)
    await storage.save(HardState(1, "a"))
    path.unlink()
    path.mkdir()
    (path / "keep").write_bytes(b"")
    with pytest.raises(OSError, match=r"state\.json") as info:
        await storage.save(HardState(2, "b"))
    assert info.value.errno == errno.EISDIR
    assert info.value.filename == str(path)
    assert sorted(os.listdir(tmp_path)) == ["state.json"], "the temporary file is removed"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO], ids=["ENOSPC", "EROFS", "EIO"])
async def test_a_write_error_without_a_file_name_gets_the_state_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """``fsync`` errors carry no file name: the storage adds its own, and keeps the errno."""
    path = tmp_path / "state.json"

    def failing_fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match=rf"\[Errno {code}\] .*state\.json") as info:
        await FileStorage(path).save(HardState(1, "a"))
    assert info.value.errno == code
    assert info.value.filename == str(path)
    assert os.listdir(tmp_path) == []


async def test_file_storage_replaces_the_file_whole(tmp_path: Path) -> None:
    """Each save writes a new file and renames it over the old one: no temp file is left, never a mix."""
    path = tmp_path / "state.json"
    storage = FileStorage(path)
    await storage.save(HardState(1, "a-rather-long-node-id-" * 20))
    inode = path.stat().st_ino
    await storage.save(HardState(2, "b"))
    assert os.listdir(tmp_path) == ["state.json"], "no temporary file left behind"
    assert path.stat().st_ino != inode, "replaced by rename, not rewritten in place"
    data = json.loads(path.read_text("utf-8"))  # one whole document, nothing of the longer one left
    assert (data["term"], data["voted_for"]) == (2, "b")


async def test_file_storage_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Specification: the file-backed storage fsyncs (the file, then its directory) before ``save`` returns."""
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    await FileStorage(tmp_path / "state.json").save(HardState(3, "c"))
    assert len(synced) >= 2


async def test_a_failed_save_leaves_the_old_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between writing and renaming leaves the previous state intact, and a later save works."""
    path = tmp_path / "state.json"
    storage = FileStorage(path)
    await storage.save(HardState(4, "d"))

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated crash"):
        await storage.save(HardState(5, "e"))
    assert await FileStorage(path).load() == HardState(4, "d")
    monkeypatch.undo()
    await storage.save(HardState(6, "f"))
    assert await FileStorage(path).load() == HardState(6, "f")
    assert os.listdir(tmp_path) == ["state.json"]


def _good_body() -> bytes:
    return json.dumps({"version": 1, "term": 9, "voted_for": "node-b"}).encode()


def _doc(**fields: object) -> bytes:
    return json.dumps({"version": 1, "term": 9, "voted_for": "b", **fields}).encode()


def _without(key: str) -> bytes:
    doc = {"version": 1, "term": 9, "voted_for": "b"}
    del doc[key]
    return json.dumps(doc).encode()


CORRUPT: dict[str, bytes] = {
    "empty": b"",
    "whitespace": b"  \n",
    "truncated": _good_body()[: len(_good_body()) // 2],
    "truncated-by-one": _good_body()[:-1],
    "trailing-garbage": _good_body() + b"xyz",
    "two-documents": _good_body() + _good_body(),
    "not-utf8": b"\xff\xfe\x00\x01",
    "null": b"null",
    "list": b"[1, 2]",
    "number": b"0",
    "string": b'"term 3"',
    "no-version": _without("version"),
    "no-term": _without("term"),
    "no-voted_for": _without("voted_for"),
    "extra-key": _doc(leader="c"),
    "version-2": _doc(version=2),
    "version-0": _doc(version=0),
    "version-str": _doc(version="1"),
    "term-str": _doc(term="9"),
    "term-negative": _doc(term=-1),
    "term-bool": _doc(term=True),
    "term-float": _doc(term=9.0),
    "term-null": _doc(term=None),
    "voted_for-list": _doc(voted_for=["b"]),
    "voted_for-bool": _doc(voted_for=False),
    "voted_for-float": _doc(voted_for=1.5),
    "voted_for-object": _doc(voted_for={"id": "b"}),
}


@pytest.mark.parametrize("body", list(CORRUPT.values()), ids=list(CORRUPT))
async def test_a_file_that_cannot_be_understood_raises_value_error(tmp_path: Path, body: bytes) -> None:
    """A corrupt, truncated, wrong-version or wrong-typed file raises ``ValueError``: never "term 0"."""
    path = tmp_path / "state.json"
    path.write_bytes(body)
    with pytest.raises(ValueError, match=r"state\.json"):
        await FileStorage(path).load()


async def test_the_good_body_itself_loads(tmp_path: Path) -> None:
    """(The corrupt files above are corruptions of this one.)"""
    path = tmp_path / "state.json"
    path.write_bytes(_good_body())
    assert await FileStorage(path).load() == HardState(9, "node-b")


@pytest.mark.parametrize(
    ("term", "why"),
    [(2**63, "cannot carry"), (2**63 - 1, "no room to grow"), (2**62 + 1, "no room to grow"), (2**70, "cannot carry")],
    ids=["2**63", "2**63-1", "MAX_TERM+1", "2**70"],
)
async def test_a_term_beyond_max_term_is_refused_at_start(tmp_path: Path, term: int, why: str) -> None:
    """Issue 14: a file whose term the wire cannot carry, or that leaves no room to grow, is refused at ``load``.

    Such a node would stop its cluster from electing (the next candidate
    needs a term above it), so it fails at start, with the way out.
    """
    path = tmp_path / "state.json"
    path.write_bytes(_doc(term=term))
    with pytest.raises(
        ValueError, match=rf"state\.json: term {term} is above MAX_TERM.*{why}.*remove their state files"
    ):
        await FileStorage(path).load()


async def test_the_largest_term_a_node_holds_loads(tmp_path: Path) -> None:
    """``MAX_TERM`` itself is a term a node can hold (it follows, it cannot stand): it loads."""
    path = tmp_path / "state.json"
    path.write_bytes(_doc(term=MAX_TERM))
    assert await FileStorage(path).load() == HardState(MAX_TERM, "b")


def test_hard_state_refuses_a_term_above_max_term() -> None:
    """``HardState`` validates like the messages: no node ever holds a term above ``MAX_TERM``."""
    assert HardState(MAX_TERM).term == MAX_TERM
    with pytest.raises(ValueError, match="MAX_TERM"):
        HardState(MAX_TERM + 1)


# --------------------------------------------------------- restart via the driver


def _single_node(storage: FileStorage) -> tuple[RaftElectionState, Callable[[], None]]:
    state, control = RaftElectionState.init(
        "a", election_timeout=0.05, heartbeat_interval=0.01, message_timeout=0.01, min_nodes=1, storage=storage
    )
    return state, control.close


async def _run_until_leader(state: RaftElectionState, *, after_term: int) -> LeaderChanged:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            events = state.subscribe()
            await tg.start(raft_election, state)
            async for change in events:
                if change.leader_id == "a" and change.term > after_term:
                    tg.cancel_scope.cancel()
                    return change
    raise AssertionError("the election ended without a leader")


async def test_a_restarted_node_comes_back_with_its_saved_term_and_vote(tmp_path: Path) -> None:
    """Specification: the term and vote are saved before they are acted on, and a restarted node reloads them."""
    storage = FileStorage(tmp_path / "a.json")
    state, close = _single_node(storage)
    try:
        won = await _run_until_leader(state, after_term=0)
    finally:
        close()
    assert won == LeaderChanged(1, "a")
    assert await storage.load() == HardState(1, "a"), "the vote for itself was saved"

    again, close = _single_node(FileStorage(tmp_path / "a.json"))
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(raft_election, again)
                # Loaded before the node takes part: the saved term and vote, not term 0.
                assert again.term == 1
                assert again.status().voted_for == "a"
                tg.cancel_scope.cancel()
    finally:
        close()

    third, close = _single_node(FileStorage(tmp_path / "a.json"))
    try:
        won = await _run_until_leader(third, after_term=1)
    finally:
        close()
    assert won.term == 2, "it stands in the term after the saved one, never again in term 1"
    assert await storage.load() == HardState(2, "a")


async def test_a_corrupt_state_file_stops_the_election_at_start(tmp_path: Path) -> None:
    """``raft_election`` refuses to start from a file it cannot read, instead of starting at term 0."""
    path = tmp_path / "a.json"
    path.write_bytes(CORRUPT["truncated"])
    state, close = _single_node(FileStorage(path))
    try:
        with anyio.fail_after(10), pytest.raises(ValueError, match=r"a\.json"):
            await raft_election(state)
    finally:
        close()
    assert state.term == 0
    assert state.core is None

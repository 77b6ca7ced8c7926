"""``Storage`` implementations: in memory, and in a file written atomically."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import final

import anyio.to_thread

from ._messages import MAX_TERM, WIRE_MAX_TERM
from ._protocols import HardState

_FORMAT_VERSION = 1


@final
class MemoryStorage:
    """Keeps the ``HardState`` in memory: the default.

    It survives a restart of the election task inside one process (reuse the
    same object), not a restart of the process.
    """

    __slots__ = ("_state", "saves")

    def __init__(self, initial: HardState | None = None) -> None:
        self._state = initial
        self.saves = 0
        """How many times ``save`` was called."""

    async def load(self) -> HardState | None:
        """Return the last saved state, or ``None``."""
        return self._state

    async def save(self, hard_state: HardState) -> None:
        """Remember *hard_state*."""
        self._state = hard_state
        self.saves += 1


@final
class FileStorage:
    """Keeps the ``HardState`` in a small JSON file, written atomically.

    Each ``save`` writes a temporary file beside the target, fsyncs it, renames
    it over the target and fsyncs the directory, so that after a crash the file
    holds either the old or the new state, never a mix, and a restarted node
    never votes twice in one term.  ``load`` raises ``ValueError`` for a file
    that exists but cannot be understood: a corrupt file is never read as
    "term 0, no vote"; nor is a term above ``MAX_TERM`` (``2**62``) accepted,
    which no node ever holds and from which a cluster could not elect.

    ``load`` also checks that the first ``save`` can succeed, by creating and
    removing the temporary file: a directory that does not exist or cannot be
    written is reported when the node starts, not at its first vote.

    Args:
        path: the file; its directory must exist and be writable.
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileStorage({str(self.path)!r})"

    async def load(self) -> HardState | None:
        """Return the saved state, ``None`` if the file does not exist.

        Raises:
            ValueError: the file exists but is not a valid state file, or
                holds a term above ``MAX_TERM``.
            OSError: the file cannot be read, or its directory does not exist
                or cannot be written (the message names the path; ``errno``
                is the system's, so ``FileNotFoundError``,
                ``PermissionError``, ... can be caught as such).
        """
        return await anyio.to_thread.run_sync(self._load_sync)

    async def save(self, hard_state: HardState) -> None:
        """Write *hard_state* durably (temp file, fsync, rename, fsync dir).

        Raises:
            OSError: the state could not be saved (a full disk, a read-only
                file system, ...); its ``filename`` is this storage's path
                and its ``errno`` the system's.  The file then still holds
                the previous state.
        """
        await anyio.to_thread.run_sync(self._save_sync, hard_state)

    @property
    def _tmp(self) -> Path:
        return self.path.with_name(f".{self.path.name}.tmp")

    def _check_writable(self) -> None:
        """Create and remove the temporary file, as ``save`` would; raise a clear ``OSError`` if that fails."""
        tmp = self._tmp
        try:
            with open(tmp, "wb"):
                pass
            os.remove(tmp)
        except OSError as exc:
            where = self.path.parent
            if isinstance(exc, FileNotFoundError) and not where.is_dir():
                why = f"the directory {str(where)!r} does not exist"
            else:
                why = f"cannot create a file in {str(where)!r}: {exc.strerror or exc}"
            raise OSError(exc.errno, f"state file {str(self.path)!r} cannot be saved: {why}") from exc

    def _load_sync(self) -> HardState | None:
        self._check_writable()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.path}: corrupt almost_raft state file: {exc}") from None
        if not isinstance(data, dict) or set(data) != {"version", "term", "voted_for"}:
            raise ValueError(
                f"{self.path}: corrupt almost_raft state file: expected an object with keys "
                "'version', 'term' and 'voted_for'"
            )
        if data["version"] != _FORMAT_VERSION:
            raise ValueError(f"{self.path}: unsupported state file version {data['version']!r}")
        term = data["term"]
        if type(term) is int and term > MAX_TERM:
            # Only hostile input saved by an older version, or a corrupt
            # file, gets here; starting from it would leave the cluster unable
            # to elect (docs/specification.md, "Terms have no dead end").
            what = "the wire format cannot carry it" if term > WIRE_MAX_TERM else "it leaves no room to grow"
            raise ValueError(
                f"{self.path}: term {term} is above MAX_TERM (2**62): {what}. No honest run gets there; "
                "to recover, stop every node of the cluster, remove their state files, and start them again"
            )
        try:
            return HardState(data["term"], data["voted_for"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.path}: corrupt almost_raft state file: {exc}") from None

    def _save_sync(self, hard_state: HardState) -> None:
        body = json.dumps(
            {"version": _FORMAT_VERSION, "term": hard_state.term, "voted_for": hard_state.voted_for}
        ).encode("utf-8")
        tmp = self._tmp
        try:
            with open(tmp, "wb") as file:
                file.write(body)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            # A write, flush or fsync error names no file (ENOSPC, EROFS, EIO):
            # name ours, keep the errno (and so the OSError subclass).
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

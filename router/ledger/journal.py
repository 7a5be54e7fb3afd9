"""The ledger's append-only journal: spend records on disk before any store sees them.

Layout in the ledger directory:

- ``journal``: a header line naming this file's id, then one JSON record a line.
- ``committed``: ``{"id": ..., "offset": ...}``: every record before ``offset`` of
  the journal with that id is in the store. Written by rename, so it is old or new,
  never torn.
- ``lock``: held (flock) while a ledger has the directory open.

Appends are plain ``write()`` calls: once one returns, the bytes belong to the
kernel and survive the process being killed (even with -9), but not a power loss
unless the journal was opened with ``fsync=True``. When everything but a short
tail is committed, ``rotate`` starts a new file holding only that tail; a new id
makes a stale ``committed`` file harmless (its offset is ignored, so at worst
records are replayed, which the stores ignore by request id).

Not thread-safe: the ledger serialises appends, rotation and offset changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

_HEADER_KEY = "tierwise_spend_journal"
_READ_CHUNK = 1 << 20


class JournalError(RuntimeError):
    """The ledger directory cannot be used (locked by another process, or not a journal)."""


@dataclass(frozen=True, slots=True)
class JournalLine:
    start: int
    end: int
    data: bytes  # without the newline


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _replace_file(path: Path, data: bytes, *, fsync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _header(journal_id: str) -> bytes:
    return json.dumps({_HEADER_KEY: 1, "id": journal_id}).encode() + b"\n"


class Journal:
    def __init__(self, directory: Path, *, fsync: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._fsync = fsync
        self._path = directory / "journal"
        self._committed_path = directory / "committed"
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise JournalError(f"another ledger has {directory} open") from None
        try:
            self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening -------------------------------------------------------------

    def _open(self) -> None:
        if not self._path.exists() or self._path.stat().st_size == 0:
            self.id = uuid.uuid4().hex
            _replace_file(self._path, _header(self.id), fsync=True)
        self._append_fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        self._read_fd = os.open(self._path, os.O_RDONLY)
        self.size = os.fstat(self._read_fd).st_size
        first = os.pread(self._read_fd, min(self.size, 4096), 0).split(b"\n", 1)[0]
        try:
            header = json.loads(first)
            self.id = str(header["id"]) if header.get(_HEADER_KEY) == 1 else ""
        except (ValueError, TypeError, KeyError, AttributeError):
            self.id = ""
        if not self.id:
            self._close_files()
            raise JournalError(f"{self._path} is not a tierwise spend journal; move it away to start afresh")
        self.header_end = len(first) + 1
        if self.size and os.pread(self._read_fd, 1, self.size - 1) != b"\n":
            # A write cut short (power loss): end the fragment so it reads as one bad line
            # instead of merging with the next record.
            _write_all(self._append_fd, b"\n")
            self.size += 1
        self.committed = self._read_committed()

    def _read_committed(self) -> int:
        try:
            saved = json.loads(self._committed_path.read_bytes())
            offset = int(saved["offset"]) if saved["id"] == self.id else self.header_end
        except FileNotFoundError:
            return self.header_end
        except (ValueError, TypeError, KeyError):
            return self.header_end  # unreadable: replaying everything is safe, skipping is not
        return min(max(offset, self.header_end), self.size)

    # -- writing -------------------------------------------------------------

    def append(self, data: bytes) -> tuple[int, int]:
        """Append one newline-terminated line; returns its (start, end) offsets."""
        written = os.write(self._append_fd, data)  # on a regular file, all of it but for a full disk
        if written < len(data):
            _write_all(self._append_fd, data[written:])
        if self._fsync:
            os.fdatasync(self._append_fd)
        start = self.size
        self.size += len(data)
        return start, self.size

    def commit(self, offset: int) -> None:
        """Every line before ``offset`` is in the store."""
        if not self.committed <= offset <= self.size:
            raise ValueError(f"commit offset {offset} outside [{self.committed}, {self.size}]")
        # In memory first: if saving fails, the next start replays a little more, which is harmless.
        self.committed = offset
        _replace_file(
            self._committed_path, json.dumps({"id": self.id, "offset": offset}).encode(), fsync=False
        )

    def rotate(self) -> int:
        """Start a new journal holding only the uncommitted tail; returns how far offsets moved."""
        tail = os.pread(self._read_fd, self.size - self.committed, self.committed)
        new_id = uuid.uuid4().hex
        header = _header(new_id)
        _replace_file(self._path, header + tail, fsync=self._fsync)
        os.close(self._append_fd)
        os.close(self._read_fd)
        self._append_fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        self._read_fd = os.open(self._path, os.O_RDONLY)
        shift = len(header) - self.committed
        self.id, self.header_end, self.size = new_id, len(header), len(header) + len(tail)
        self.committed = self.header_end
        self.commit(self.header_end)
        return shift

    # -- reading -------------------------------------------------------------

    def pread(self, start: int, end: int) -> bytes:
        return os.pread(self._read_fd, end - start, start)

    def read(self, start: int, limit: int, max_lines: int) -> list[JournalLine]:
        """Up to ``max_lines`` whole lines from ``start``, not past ``limit``."""
        lines: list[JournalLine] = []
        buffer = b""
        buffer_start = position = start
        while len(lines) < max_lines:
            newline = buffer.find(b"\n", position - buffer_start)
            if newline < 0:
                if buffer_start + len(buffer) >= limit:
                    break
                read_at = buffer_start + len(buffer)
                buffer = buffer[position - buffer_start :] + os.pread(
                    self._read_fd, min(_READ_CHUNK, limit - read_at), read_at
                )
                buffer_start = position
                continue
            end = buffer_start + newline + 1
            lines.append(JournalLine(position, end, buffer[position - buffer_start : newline]))
            position = end
        return lines

    def _close_files(self) -> None:
        for fd in (self._append_fd, self._read_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        self._close_files()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)  # closing the descriptor releases the flock

"""The on-disk trace spool: records wait here, in order, until the platform has them.

Layout of a spool directory (one per agent process; a lock file keeps a second process out):

```
segment-00000000000000000000.jsonl   one canonical JSON trace record per line
segment-00000000000000004711.jsonl   named by the spool position of its first record
cursor.json                          {"acked": N}: positions below N are delivered
lock
```

Every record has a position: 0, 1, 2, ... in append order, across segments and restarts.
`pending` returns the records from the cursor on; `ack(upto)` moves the cursor (an atomic
file replace) and deletes segments whose records are all delivered. The shipper does

```
start = spool.acked
batch = spool.pending(500)
post(batch)                      # the server is idempotent on (agent, task, seq)
spool.ack(start + len(batch))
```

so a crash between a successful post and the ack re-sends that one batch, which the server
ignores: delivery is exactly-once end to end, and nothing acked is returned again.

Durability and cost: `append` writes the line with one unbuffered `os.write`, so a record is
in the kernel once `append` returns and survives the process being killed. Whether it also
survives a power cut depends on `sync`:

- `"batch"` (default): fsync on `flush()`, on segment rotation and before every `ack`. The
  hot path costs a JSON encoding and one write system call; a power cut can lose the records
  appended since the last flush.
- `"record"`: fsync after every record. Nothing complete is ever lost, but each step waits for
  the disk (typically a millisecond or more), which the agent feels.

A process killed mid-write can leave a torn last line; opening the spool truncates the last
segment after its last complete record, so no complete record is lost and no garbage is read.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

from pathguard.errors import PathguardError, TraceIntegrityError
from pathguard.remote.cache import fsync_directory, write_atomically
from pathguard.trace import TraceRecord

__all__ = ["SpoolFullError", "SpoolLockedError", "TraceSpool"]

logger = logging.getLogger("pathguard")

SyncMode = Literal["batch", "record"]

_SEGMENT: Final = re.compile(r"^segment-(\d{20})\.jsonl$")
_CURSOR: Final = "cursor.json"
_LOCK: Final = "lock"


class SpoolLockedError(PathguardError, RuntimeError):
    """Another process has the trace spool directory open."""


class SpoolFullError(PathguardError, OSError):
    """The spool holds `max_bytes` of undelivered records and refused another one."""


def _segment_name(start: int) -> str:
    return f"segment-{start:020d}.jsonl"


def _parse_line(line: bytes) -> TraceRecord:
    """A spool line as a record; ValueError (or TraceIntegrityError) when it is not one."""
    return TraceRecord.from_dict(json.loads(line))


class TraceSpool:
    """A durable, ordered queue of trace records on disk; also a `TraceSink`.

    Thread-safe: any number of threads may append while one shipper reads and acks.
    `segment_bytes` is the size after which a new segment file is started. With `max_bytes`,
    an append that would take the segments on disk past it raises SpoolFullError (counted in
    `refused`): during a long outage the newest records are refused, loudly, rather than the
    disk filled or delivered records forgotten. Disk use is then bounded by `max_bytes`
    plus up to one segment of already-delivered records.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        sync: SyncMode = "batch",
        segment_bytes: int = 4 * 1024 * 1024,
        max_bytes: int | None = None,
    ) -> None:
        if sync not in ("batch", "record"):
            raise ValueError(f"sync must be 'batch' or 'record', not {sync!r}.")
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be at least 1.")
        self.directory = Path(directory)
        self.sync: SyncMode = sync
        self.segment_bytes = segment_bytes
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1, or None for no limit.")
        self.max_bytes = max_bytes
        self.refused = 0
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write_lock = threading.Lock()  # appends, rotation, the segment list
        self._read_lock = threading.Lock()  # pending and ack (the shipper's side)
        self._closed = False
        self._lock_fd = self._take_directory_lock()
        try:
            self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise

    def __repr__(self) -> str:
        return f"TraceSpool({str(self.directory)!r}, acked={self._acked}, end={self._end})"

    # -- opening and recovery -----------------------------------------------------------------

    def _take_directory_lock(self) -> int:
        fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock, one process by rule
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolLockedError(
                f"The trace spool {str(self.directory)!r} is in use by another process; give "
                "each process its own spool directory."
            ) from None
        return fd

    def _open(self) -> None:
        starts = sorted(
            int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT.match(p.name))
        )
        acked = self._read_cursor(default=starts[0] if starts else 0)
        if starts and acked < starts[0]:
            logger.error(
                "trace spool %s: records %d to %d were deleted from disk and cannot be shipped",
                self.directory,
                acked,
                starts[0] - 1,
            )
            acked = starts[0]
        if not starts:
            starts = [acked]
            self._create_segment(acked)
        last = starts[-1]
        count, size = self._recover_tail(self.directory / _segment_name(last))
        end = last + count
        if end < acked:
            # The cursor is ahead of the data (records lost to a power cut before they were
            # synced cannot be acked, but be safe): start a fresh segment at the cursor so no
            # new record gets a position that already counts as delivered.
            logger.error(
                "trace spool %s: the cursor (%d) is past the last record (%d); continuing "
                "from the cursor",
                self.directory,
                acked,
                end,
            )
            starts.append(acked)
            self._create_segment(acked)
            last, end, size = acked, acked, 0
        for temp in self.directory.glob(".cursor.*.tmp"):
            # Left by a crash mid-ack; safe to remove, as the directory lock is ours.
            with contextlib.suppress(OSError):
                temp.unlink()
        self._starts = starts
        self._acked = acked
        self._end = end
        self._active_start = last
        self._active_size = size
        self._fd = os.open(
            self.directory / _segment_name(last), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
        )
        self._unsynced = False
        self._sealed_bytes = {
            start: (self.directory / _segment_name(start)).stat().st_size for start in starts[:-1]
        }
        # Where the next pending read starts: (position, segment start, byte offset).
        self._read_hint: tuple[int, int, int] | None = None
        self._delete_acked_segments()

    def _read_cursor(self, *, default: int) -> int:
        path = self.directory / _CURSOR
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            return default
        except (OSError, ValueError) as exc:
            # The server ignores records it already has, so re-sending is the safe fallback.
            logger.error(
                "trace spool %s: cannot read %s (%s); records will be shipped again from %d",
                self.directory,
                path.name,
                exc,
                default,
            )
            return default
        acked = document.get("acked") if isinstance(document, dict) else None
        if isinstance(acked, bool) or not isinstance(acked, int) or acked < 0:
            logger.error(
                "trace spool %s: %s holds no valid position; records will be shipped again from %d",
                self.directory,
                path.name,
                default,
            )
            return default
        return acked

    def _create_segment(self, start: int) -> None:
        fd = os.open(
            self.directory / _segment_name(start), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        os.close(fd)
        fsync_directory(self.directory)

    def _recover_tail(self, path: Path) -> tuple[int, int]:
        """Count the complete records of the last segment; cut off a torn or broken tail."""
        data = path.read_bytes()
        count = 0
        good = 0  # byte length of the complete, parseable prefix
        while good < len(data):
            newline = data.find(b"\n", good)
            if newline < 0:
                break
            try:
                _parse_line(data[good:newline])
            except (ValueError, TraceIntegrityError):
                break
            count += 1
            good = newline + 1
        if good < len(data):
            logger.warning(
                "trace spool %s: dropped %d bytes of incomplete record at the end (the process "
                "stopped mid-write); %d complete records kept",
                path,
                len(data) - good,
                count,
            )
            with open(path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        return count, good

    # -- appending ----------------------------------------------------------------------------

    @property
    def acked(self) -> int:
        """The position of the first record not yet delivered."""
        return self._acked

    @property
    def end(self) -> int:
        """The position the next appended record will get."""
        return self._end

    def __len__(self) -> int:
        """How many records are waiting for delivery."""
        return self._end - self._acked

    def append(self, record: TraceRecord) -> int:
        """Write one record to the end of the spool and return its position.

        Raises ValueError if the record cannot be canonical JSON, OSError if the disk refuses
        it (the spool is left without a partial line), RuntimeError after `close`.
        """
        line = record.canonical_line()
        with self._write_lock:
            if self._closed:
                raise RuntimeError(
                    f"The trace spool {str(self.directory)!r} is closed; open a new TraceSpool "
                    "to keep appending."
                )
            if self.max_bytes is not None:
                used = sum(self._sealed_bytes.values()) + self._active_size
                if used + len(line) > self.max_bytes:
                    self.refused += 1
                    raise SpoolFullError(
                        f"The trace spool {str(self.directory)!r} holds {used} bytes of "
                        f"undelivered records, its max_bytes limit; seq {record.seq} of task "
                        f"{record.task_id!r} was not spooled. Bring the platform back or raise "
                        "max_bytes."
                    )
            if self._active_size > 0 and self._active_size + len(line) > self.segment_bytes:
                self._rotate()
            try:
                written = os.write(self._fd, line)
                if written != len(line):
                    raise OSError(f"only {written} of {len(line)} bytes were written")
                if self.sync == "record":
                    os.fsync(self._fd)
            except OSError:
                # Leave no torn line behind for the next record to be glued onto.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._active_size)
                raise
            self._unsynced = self.sync != "record"
            self._active_size += len(line)
            position = self._end
            self._end += 1
        return position

    def write_many(self, records: Sequence[TraceRecord]) -> None:
        """Append records in order with one write system call per segment they go to.

        A record the spool refuses (SpoolFullError, an OSError, a value that is not JSON)
        is logged and counted like a failed `append`; the records after it still go in.
        """
        lines: list[bytes | Exception] = []
        for record in records:
            try:
                lines.append(record.canonical_line())
            except ValueError as exc:
                lines.append(exc)
        done = 0
        while done < len(records):
            try:
                with self._write_lock:
                    done += self._append_lines(lines, done)
            except Exception as exc:
                record = records[done]
                logger.error(
                    "the trace spool failed to take record seq %d of task %s: %r",
                    record.seq,
                    record.task_id,
                    exc,
                )
                done += 1

    def _append_lines(self, lines: list[bytes | Exception], start: int) -> int:
        """Append `lines[start:]` up to the first one that needs a new segment or is refused
        (raising for that one when it is the first); the number appended. Under the write
        lock."""
        if self._closed:
            raise RuntimeError(
                f"The trace spool {str(self.directory)!r} is closed; open a new TraceSpool "
                "to keep appending."
            )
        used = None if self.max_bytes is None else sum(self._sealed_bytes.values())
        chunk: list[bytes] = []
        size = 0
        for line in lines[start:]:
            if isinstance(line, Exception):
                if chunk:
                    break
                raise line
            total = self._active_size + size
            if (
                used is not None
                and self.max_bytes is not None
                and used + total + len(line) > self.max_bytes
            ):
                if chunk:
                    break
                self.refused += 1
                raise SpoolFullError(
                    f"The trace spool {str(self.directory)!r} holds {used + total} bytes "
                    "of undelivered records, its max_bytes limit; a record was not "
                    "spooled. Bring the platform back or raise max_bytes."
                )
            if total > 0 and total + len(line) > self.segment_bytes:
                if chunk:
                    break
                self._rotate()
                if used is not None:
                    used = sum(self._sealed_bytes.values())
            chunk.append(line)
            size += len(line)
        data = b"".join(chunk)
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"only {written} of {len(data)} bytes were written")
            if self.sync == "record":
                os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._active_size)
            raise
        self._unsynced = self.sync != "record"
        self._active_size += size
        self._end += len(chunk)
        return len(chunk)

    def _rotate(self) -> None:
        """Seal the active segment (fsync) and start the next one; under the write lock."""
        os.fsync(self._fd)
        os.close(self._fd)
        self._sealed_bytes[self._active_start] = self._active_size
        start = self._end
        self._fd = os.open(
            self.directory / _segment_name(start), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
        )
        fsync_directory(self.directory)
        self._starts.append(start)
        self._active_start = start
        self._active_size = 0
        self._unsynced = False

    def _sync(self) -> None:
        with self._write_lock:
            if self._unsynced and not self._closed:
                os.fsync(self._fd)
                self._unsynced = False

    # -- TraceSink ----------------------------------------------------------------------------

    def write(self, record: TraceRecord) -> None:
        """`TraceSink.write`: append the record."""
        self.append(record)

    def flush(self) -> None:
        """Make every appended record durable (fsync)."""
        self._sync()

    def close(self) -> None:
        """Flush and release the spool directory (safe to call twice)."""
        with self._write_lock:
            if self._closed:
                return
            if self._unsynced:
                os.fsync(self._fd)
            self._closed = True
            os.close(self._fd)
            os.close(self._lock_fd)

    def __enter__(self) -> TraceSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading and acknowledging ------------------------------------------------------------

    def pending(self, limit: int = 1000) -> list[TraceRecord]:
        """Up to `limit` undelivered records, oldest first, starting at position `acked`.

        Raises TraceIntegrityError naming the file and line if a stored record is corrupt.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1.")
        with self._read_lock:
            with self._write_lock:
                start, end = self._acked, self._end
                starts = list(self._starts)
                active_start, active_size = self._active_start, self._active_size
            if start == end:
                return []
            hint = self._read_hint
            if hint is not None and hint[0] == start and hint[1] in starts:
                _, seg_start, offset = hint
                skip = 0
            else:
                seg_start = max(s for s in starts if s <= start)
                offset, skip = 0, start - seg_start
            records: list[TraceRecord] = []
            position = start
            want = min(limit, end - start)
            index = starts.index(seg_start)
            while True:
                path = self.directory / _segment_name(seg_start)
                stop = active_size if seg_start == active_start else None
                offset = self._read_segment(path, offset, stop, skip, want, records, start)
                position = start + len(records)
                if len(records) >= want:
                    break
                index += 1
                if index >= len(starts) or starts[index] != position:
                    raise TraceIntegrityError(
                        f"The trace spool file {str(path)!r} ends at position {position}, "
                        "before the records the spool expects; it was truncated or edited. "
                        "Move the spool directory aside to start a new one."
                    )
                seg_start, offset, skip = starts[index], 0, 0
            # Remember where the batch ends, so acking it lets the next read seek there.
            self._read_hint = (position, seg_start, offset)
            return records

    def _read_segment(
        self,
        path: Path,
        offset: int,
        stop: int | None,
        skip: int,
        want: int,
        records: list[TraceRecord],
        first: int,
    ) -> int:
        """Append records from `path` (from byte `offset`, skipping `skip` lines) to `records`
        until `want` are held or the segment ends; return the byte offset reached.

        `first` is the position of `records[0]` (for error messages)."""
        with open(path, "rb") as f:
            f.seek(offset)
            # Read only the bytes that existed when `pending` began: the rest may be mid-write.
            data = f.read() if stop is None else f.read(max(0, stop - offset))
        cursor = 0
        line_no = 0
        while len(records) < want:
            newline = data.find(b"\n", cursor)
            if newline < 0:
                break
            line = data[cursor:newline]
            cursor = newline + 1
            line_no += 1
            if skip:
                skip -= 1
                continue
            try:
                records.append(_parse_line(line))
            except (ValueError, TraceIntegrityError) as exc:
                raise TraceIntegrityError(
                    f"The trace spool file {str(path)!r} holds a corrupt record at position "
                    f"{first + len(records)} ({exc}); move the file aside to skip it.",
                ) from None
        return offset + cursor

    def ack(self, upto: int) -> None:
        """Mark every record before position `upto` as delivered (persisted before returning).

        Acking a position at or below `acked` changes nothing. ValueError past `end`.
        """
        with self._read_lock:
            if upto <= self._acked:
                return
            if upto > self._end:
                raise ValueError(
                    f"Cannot ack up to position {upto}: the spool ends at {self._end}. Pass "
                    "acked + the number of records delivered."
                )
            # A cursor must never point past data that a power cut could still take away.
            self._sync()
            data = json.dumps({"acked": upto}).encode("utf-8") + b"\n"
            write_atomically(self.directory / _CURSOR, data, prefix=".cursor.")
            self._acked = upto
            hint = self._read_hint
            if hint is not None and hint[0] != upto:
                self._read_hint = None
            self._delete_acked_segments()

    def _delete_acked_segments(self) -> None:
        with self._write_lock:
            starts = self._starts
            doomed = [
                s
                for s, following in itertools.pairwise(starts)
                if following <= self._acked and s != self._active_start
            ]
            self._starts = [s for s in starts if s not in doomed]
            for start in doomed:
                self._sealed_bytes.pop(start, None)
        for start in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / _segment_name(start))
        if doomed:
            logger.debug(
                "trace spool %s: deleted %d delivered segments", self.directory, len(doomed)
            )

    def stats(self) -> dict[str, Any]:
        """Counts for `guard.status()`: waiting records, segments, bytes on disk, refusals."""
        with self._write_lock:
            starts = list(self._starts)
        size = 0
        for start in starts:
            with contextlib.suppress(FileNotFoundError):
                size += (self.directory / _segment_name(start)).stat().st_size
        return {
            "pending": len(self),
            "acked": self._acked,
            "end": self._end,
            "segments": len(starts),
            "bytes": size,
            "refused": self.refused,
        }

"""The one place where the pipeline writes its outputs and decides what is already finished.

Every stage, in both packages, writes through these functions:

* :func:`atomic_text_file` / :func:`write_json_atomic`: a whole file written through a temporary
  file and ``os.replace``, so a kill never leaves half a file;
* :class:`JsonlSink`: an append-only JSONL output, flushed and synced per record, held by one
  writer at a time (an exclusive lock on ``<output>.lock``; a second writer gets
  :class:`OutputLockedError`), whose torn last line (from a killed writer) is cut off when it is
  opened again, while a complete last record that only lost its newline is kept;
* the resume rule: a unit of work is finished when its record is *complete* in the output, i.e.
  a newline-terminated JSONL line (:func:`read_jsonl_objects`, :func:`finished_keys`) or a whole
  JSON file that says so (:func:`load_finished_json`);
* :func:`check_not_input`: a stage refuses an output path that is also one of its inputs;
* :func:`read_utf8`: the one reader of input text files: plain UTF-8, or an error naming the file.

Hardening of resuming (locks, stricter checks) belongs here, so every stage gets it at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Hashable, Iterable, Iterator, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

# For tests only: a process where this is set to N kills itself (SIGKILL) right after its N-th record
# (a JsonlSink line, or an evaluation's per-task file) is on disk: a crash at a known point, not a race.
KILL_AFTER_RECORDS_ENV = "STECA_TEST_KILL_AFTER_RECORDS"


def kill_point(records_written: int) -> None:
    """SIGKILL this process when ``records_written`` equals ``$STECA_TEST_KILL_AFTER_RECORDS``."""
    limit = os.environ.get(KILL_AFTER_RECORDS_ENV)
    if limit is not None and records_written == int(limit):
        logger.warning("%s=%s: killing this process after record %d", KILL_AFTER_RECORDS_ENV, limit, records_written)
        os.kill(os.getpid(), signal.SIGKILL)


def to_json_obj(record: Any) -> Any:
    """What a record is written as: its ``to_dict()``, else its ``to_output()``, else itself."""
    if hasattr(record, "to_dict"):
        return record.to_dict()
    if hasattr(record, "to_output"):
        return record.to_output()
    return record


@contextlib.contextmanager
def atomic_text_file(path: str | os.PathLike) -> Iterator[IO[str]]:
    """A text file that replaces ``path`` only when the ``with`` block ends without an error."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, p)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON (UTF-8, ``indent`` 1) to ``path`` atomically; returns the path."""
    with atomic_text_file(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
    return Path(path)


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Any]) -> Path:
    """Write ``records`` as JSONL (one object per line) to ``path`` atomically; returns the path."""
    with atomic_text_file(path) as f:
        for r in records:
            f.write(json.dumps(to_json_obj(r), ensure_ascii=False) + "\n")
    return Path(path)


class OutputLockedError(RuntimeError):
    """Another process is writing the same output."""


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: ``<output>.lock`` beside it."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


def lock_output(path: str | os.PathLike) -> IO[bytes]:
    """Take the exclusive lock of ``path``'s output (released by closing the returned file, or when the
    process ends, however it ends); :class:`OutputLockedError` when another process holds it."""
    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    f = lp.open("ab")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise OutputLockedError(f"{path} is being written by another process (it holds {lp}); wait for that run "
                                f"to end or stop it, then run again") from None
    return f


class JsonlSink:
    """Append-only JSONL output that flushes and syncs every record: a crash loses at most the line
    in flight. One writer at a time: opening takes the output's lock (:func:`lock_output`), then
    repairs its tail (:func:`repair_jsonl_tail`). Resume from :meth:`finished_keys`, read after
    the repair. ``sink(record)`` is the same as ``sink.write(record)``, so a sink can be handed to
    the rollout engine as a callback."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = lock_output(self.path)
        try:
            repair_jsonl_tail(self.path)
            self._f = self.path.open("a", encoding="utf-8")
            self.written = 0
        except BaseException:
            self._lock.close()
            raise

    def finished_keys(self, key: Callable[[Any], K | None]) -> set[K]:
        """:func:`finished_keys` of this output (its tail already repaired, under the lock)."""
        self._f.flush()
        return finished_keys(self.path, key)

    def write(self, record: Any) -> None:
        self._f.write(json.dumps(to_json_obj(record), ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.written += 1
        kill_point(self.written)

    __call__ = write

    def close(self) -> None:
        self._f.close()
        self._lock.close()

    def __enter__(self) -> "JsonlSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair_jsonl_tail(path: str | os.PathLike) -> None:
    """Drop an incomplete final line (not valid JSON) left by a killed writer.

    A last line without its newline that is a whole JSON object is the complete record of a writer
    killed between the record and its newline (a prefix of a JSON object is never an object): its
    newline is added, so the record is kept and counts as finished.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    cut = len(data)
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        try:
            whole = isinstance(json.loads(data[cut:]), dict)
        except (json.JSONDecodeError, UnicodeDecodeError):
            whole = False
        if whole:
            logger.warning("%s: the last record lacked its newline; keeping it", path)
            with path.open("ab") as f:
                f.write(b"\n")
            return
    else:
        last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[last_start:])
        except json.JSONDecodeError:
            cut = last_start
    if cut != len(data):
        logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(data) - cut)
        with path.open("r+b") as f:
            f.truncate(cut)


def read_jsonl_objects(path: str | os.PathLike) -> list[Any]:
    """The complete records of a JSONL output: newline-terminated lines that parse as JSON.

    A missing file is empty; a torn or unparsable line is skipped (it is not finished work).
    """
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").split("\n")[:-1]:  # the part after the last newline is torn
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def finished_keys(path: str | os.PathLike, key: Callable[[Any], K | None]) -> set[K]:
    """The keys of the finished records of a JSONL output; ``key`` returns None for a record it
    does not recognise (that record does not count as finished)."""
    out: set[K] = set()
    for obj in read_jsonl_objects(path):
        k = key(obj)
        if k is not None:
            out.add(k)
    return out


def load_finished_json(path: str | os.PathLike, parse: Callable[[Any], T], is_finished: Callable[[T], bool]) -> T | None:
    """The record stored at ``path`` when the file is whole and ``is_finished`` says so, else None
    (a missing, unreadable or unfinished file means the work runs again)."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        record = parse(json.loads(p.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as e:
        logger.warning("%s: unreadable (%s); its work runs again", p, e)
        return None
    return record if is_finished(record) else None


UTF8_BOM = b"\xef\xbb\xbf"


class UnreadableTextError(ValueError):
    """An input file that is not plain UTF-8 text; the message names the file and says how to fix it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def read_utf8(path: str | os.PathLike) -> str:
    """A file's text as UTF-8. A leading byte-order mark or any other encoding raises
    :class:`UnreadableTextError` naming the file.

    A byte-order mark is refused rather than dropped: the stages write plain UTF-8, so a BOM means
    the file was made or edited elsewhere, and a reader that silently skips it would hide that.
    """
    p = Path(path)
    data = p.read_bytes()
    if data.startswith(UTF8_BOM):
        raise UnreadableTextError(p, "starts with a UTF-8 byte-order mark (bytes ef bb bf); save it as UTF-8 without "
                                  f"a BOM, e.g. `sed -i '1s/^\\xEF\\xBB\\xBF//' {p}`")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnreadableTextError(p, f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                                  "convert the file to UTF-8") from None


def check_writable(path: str | os.PathLike) -> Path:
    """Create ``path``'s folder and probe that a file can be written there, before a long run writes it.

    Raises ``OSError`` naming ``path`` when it cannot.
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise IsADirectoryError(f"{p} is a directory")
        p.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p.parent, prefix=f".{p.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise OSError(f"{p}: cannot write the output here ({e})") from None
    return p


def check_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Raise ValueError when ``output`` is the same file as one of ``inputs`` (None entries ignored)."""
    out = Path(output).resolve()
    for i in inputs:
        if i is not None and Path(i).resolve() == out:
            raise ValueError(f"output {output} is also an input of this stage; choose another output path")

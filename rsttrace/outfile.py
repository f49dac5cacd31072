"""Files rsttrace writes where a user says: report and summary CSVs, TUI
exports, recordings, and remedy's own files.

rsttrace runs as root, so a path given on the command line is handled with
care (README, "Output files"):

- a new path or an existing regular file: the output goes to a temporary
  file beside it (created with O_EXCL under an unpredictable name, mode
  0600, relative to the directory opened once, so no link is ever
  followed) and is renamed over the path only when complete. An error,
  Ctrl-C, SIGTERM or SIGHUP removes the temporary file and leaves the old
  file as it was.
- a character device or a FIFO (/dev/null, a pipe another program reads):
  written in place. Renaming over it would replace the device node (as
  root, /dev/null itself) with a regular file.
- `-`: standard output, in place.
- a symbolic link: refused. Root writing through a link planted in a
  directory someone else can write would write wherever it points.
- anything else (a directory, a block device, a socket): refused.

A recording grows while it is made and must keep what it has if the
recorder is killed, so it is written in place (`open_in_place`) under the
same rules about links and devices; an existing file is overwritten only
if it is empty, an earlier recording, or the user forces it.

No module of analysis/ or tracer/ logic lives here: only where bytes go
(paths, temporary files, the forked writer process, the standard streams
and the signals that must not leave a temporary file behind).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import pickle
import secrets
import signal
import stat
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

MODE = 0o600      # outputs hold process, pod and host names and addresses


class OutputError(OSError):
    """An output that cannot be written; the message (one line) names the
    path as the user gave it. An OSError, so that code which undoes its
    work on any OSError (remedy's transaction) still does."""


class OutputClosed(OutputError):
    """The reader of a pipe or FIFO went away (EPIPE): like a program killed
    by SIGPIPE, the writer stops quietly."""


class NotReplaceable(OutputError):
    """An existing file that `open_in_place` must not overwrite."""


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def write_error(name: str, e: OSError) -> OutputError:
    """The error for a failed write to `name` (as the user gave it)."""
    if e.errno == errno.EPIPE:
        return OutputClosed(f"{name}: the reader went away")
    return OutputError(f"cannot write {name}: {_why(e)}")


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return what
    return "not a regular file"


def _refuse(name: str, mode: int) -> OutputError:
    if stat.S_ISLNK(mode):
        return OutputError(f"{name} is a symbolic link: name the file itself "
                           "(rsttrace does not write through links; `-` is standard output)")
    return OutputError(f"{name} is {_kind(mode)}: name a file, a FIFO or `-`")


def _in_place(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _open_dir(path: str) -> int:
    d = os.path.dirname(path) or "."
    try:
        return os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {d}: {_why(e)}") from None


def _temp_at(dfd: int, base: str, mode: int) -> tuple[str, int]:
    """Creates an unpredictable name beside `base` in directory `dfd`, the
    way mkstemp does (O_EXCL, never through a link), with exactly `mode`."""
    stem = base[:200]       # the name must stay under NAME_MAX
    for _ in range(100):
        tmp = f".{stem}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode, dir_fd=dfd)
        except FileExistsError:
            continue
        os.fchmod(fd, mode)     # exactly `mode`, whatever the umask
        return tmp, fd
    raise FileExistsError(errno.EEXIST, "no unused temporary name")


class OutFile:
    """One output named by the user (see the module's text): `write`, then
    `commit()` puts it in place; `abort()` (or an exception in a `with`
    block) removes what was written to a temporary file.

    `write` raises OutputError naming the path as given. `sync` makes the
    rename durable (fsync of the file and its directory) for files that
    configure the host; a report can be made again from its recording.
    `over_links` replaces a symbolic link at `path` (the link itself, never
    what it points to) instead of refusing it: for files only rsttrace
    writes, where a link is not the user's choice of output."""

    def __init__(self, path: str | os.PathLike[str], *, mode: int = MODE, sync: bool = False,
                 over_links: bool = False, owner: tuple[int, int] | None = None,
                 errors: str = "strict"):
        self.path = os.fspath(path)
        self.name = "standard output" if self.path == "-" else self.path    # for messages
        self.mode, self.sync, self.owner = mode, sync, owner
        self.in_place = False
        self._dfd: int | None = None
        self._tmp: str | None = None
        if self.path == "-":
            self.in_place = True
            fd = os.dup(sys.stdout.fileno())
        else:
            fd = self._open(over_links)
        try:
            self.fh = open(fd, "w", encoding="utf-8", errors=errors, newline="")
        except BaseException:
            os.close(fd)
            self._drop_temp()
            raise

    def _open(self, over_links: bool) -> int:
        try:
            st: os.stat_result | None = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise OutputError(f"cannot write {self.name}: {_why(e)}") from None
        if st is not None and _in_place(st.st_mode):
            return self._open_in_place(st)
        if st is not None and not stat.S_ISREG(st.st_mode) and not (over_links and stat.S_ISLNK(st.st_mode)):
            raise _refuse(self.name, st.st_mode)
        self._dfd = _open_dir(self.path)
        try:
            self._tmp, fd = _temp_at(self._dfd, os.path.basename(self.path), self.mode)
            if self.owner is not None:
                os.fchown(fd, *self.owner)
        except OSError as e:
            os.close(self._dfd)
            self._dfd = None
            raise OutputError(f"cannot write {self.name}: {_why(e)}") from None
        return fd

    def _open_in_place(self, st: os.stat_result) -> int:
        # No O_CREAT, no O_TRUNC: a device or FIFO is written as it is. A FIFO
        # opens once a reader has it open, as with any writer to a FIFO.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _refuse(self.name, stat.S_IFLNK) from None
            raise OutputError(f"cannot write {self.name}: {_why(e)}") from None
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise OutputError(f"{self.name} changed while it was opened: try again")
        self.in_place = True
        return fd

    # -- writing ---------------------------------------------------------
    def write(self, data: Any) -> None:
        try:
            self.fh.write(data)
        except OSError as e:
            raise write_error(self.name, e) from None

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as e:
            raise write_error(self.name, e) from None

    def commit(self) -> None:
        """Everything written: put it in place (rename over the path)."""
        try:
            self.fh.flush()
            if self.sync and not self.in_place:
                os.fsync(self.fh.fileno())
            self.fh.close()
            if self._tmp is not None:
                os.replace(self._tmp, os.path.basename(self.path),
                           src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
                self._tmp = None
                if self.sync:
                    os.fsync(self._dfd)
        except OSError as e:
            self.abort()
            raise write_error(self.name, e) from None
        self._close_dir()

    def abort(self) -> None:
        """Drop what was written (to a temporary file); idempotent."""
        try:
            self.fh.close()
        except (OSError, ValueError):
            pass
        self._drop_temp()

    def _drop_temp(self) -> None:
        if self._tmp is not None:
            tmp, self._tmp = self._tmp, None
            try:
                os.unlink(tmp, dir_fd=self._dfd)
            except FileNotFoundError:
                pass
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dfd is not None:
            dfd, self._dfd = self._dfd, None
            os.close(dfd)

    def __enter__(self) -> "OutFile":
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


class InPlace:
    """A file opened by `open_in_place`: `fh` (binary) writes from its
    start; `created` says whether it was made new."""

    def __init__(self, name: str, fh: Any, created: bool, regular: bool):
        self.name, self.fh, self.created, self.regular = name, fh, created, regular

    def start(self) -> None:
        """Empties an existing regular file before the first write (done
        late, so that a recorder that fails to start leaves it as it was)."""
        if self.regular and not self.created:
            try:
                os.ftruncate(self.fh.fileno(), 0)
                os.fchmod(self.fh.fileno(), MODE)
            except OSError as e:
                raise write_error(self.name, e) from None

    def discard(self) -> None:
        """Closes it without a write; a file it created is removed."""
        try:
            self.fh.close()
        except OSError:
            pass
        if self.created:
            try:
                # only if it is still the empty file made here
                st = os.lstat(self.name)
                if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                    os.unlink(self.name)
            except OSError:
                pass


def open_in_place(path: str | os.PathLike[str], *, replaceable: Callable[[bytes], bool],
                  force: bool = False, what: str = "file") -> InPlace:
    """Opens `path` to be written where it is (what is written shows at once
    and survives the writer being killed). A new file is created with mode
    0600; a character device or FIFO is written as it is; a link is
    refused; an existing regular file only if it is empty, `replaceable`
    (given its first bytes) says so, or `force`."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
        return InPlace(name, open(fd, "wb"), created=True, regular=True)
    except FileExistsError:
        pass
    except OSError as e:
        raise OutputError(f"cannot write {name}: {_why(e)}") from None
    try:
        st = os.lstat(name)
    except OSError as e:
        raise OutputError(f"cannot write {name}: {_why(e)}") from None
    if not (stat.S_ISREG(st.st_mode) or _in_place(st.st_mode)):
        raise _refuse(name, st.st_mode)
    flags = os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    # a regular file is read (its first line) before anything is changed
    flags |= os.O_RDWR if stat.S_ISREG(st.st_mode) else os.O_WRONLY
    try:
        fd = os.open(name, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse(name, stat.S_IFLNK) from None
        raise OutputError(f"cannot write {name}: {_why(e)}") from None
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise OutputError(f"{name} changed while it was opened: try again")
        regular = stat.S_ISREG(now.st_mode)
        if regular and now.st_size and not force and not replaceable(os.pread(fd, 1 << 20, 0)):
            raise NotReplaceable(f"{name} exists and is not an rsttrace {what}")
        return InPlace(name, open(fd, "wb"), created=False, regular=regular)
    except BaseException:
        os.close(fd)
        raise


# -- which file a path names ------------------------------------------------

def file_id(path: str | os.PathLike[str], *, output: bool) -> tuple | None:
    """What a path names, however it is spelled: (device, inode) of an
    existing file (outputs are not followed through a link, inputs are;
    `-` is standard output or input), or (device, inode of its directory,
    name) of a file not made yet. None if it cannot be told."""
    name = os.fspath(path)
    try:
        if name == "-":
            st = os.fstat((sys.stdout if output else sys.stdin).fileno())
        else:
            st = os.lstat(name) if output else os.stat(name)
        return (st.st_dev, st.st_ino)
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return None
    try:
        d = os.stat(os.path.dirname(name) or ".")
    except OSError:
        return None
    return (d.st_dev, d.st_ino, os.path.basename(name))


def check_distinct(inputs: list[tuple[str, Any]], outputs: list[tuple[str, Any]]) -> None:
    """Refuses an output that is one of the inputs, or two outputs that are
    the same file (by device and inode, not by name). Each entry is
    (how the user named it, path); entries whose path is None are skipped."""
    seen: list[tuple[tuple, str, bool]] = []
    for label, path in inputs:
        if path is not None:
            fid = file_id(path, output=False)
            if fid is not None:
                seen.append((fid, label, True))
    for label, path in outputs:
        if path is None:
            continue
        fid = file_id(path, output=True)
        if fid is None:
            continue
        for other, other_label, is_input in seen:
            if other == fid:
                if is_input:
                    raise OutputError(f"{label} {path} is {other_label} itself: "
                                      "writing it would destroy what is read; choose another file")
                raise OutputError(f"{label} {path} and {other_label} name the same file: "
                                  "choose two different files")
        seen.append((fid, f"{label} {path}", False))


# -- standard streams and signals -------------------------------------------

def _silence(stream: Any) -> None:
    """Points a broken standard stream at /dev/null, so the interpreter's
    last flush at exit neither fails again nor turns the status into 120."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def write_stdout(text: str) -> None:
    """Writes `text` to standard output. A reader that went away (`| head`)
    raises OutputClosed, any other failure (a full disk, `> /dev/full`)
    OutputError; either way the stream is silenced first."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as e:
        _silence(sys.stdout)
        raise write_error("standard output", e) from None


class Say:
    """Messages to standard error that never stop the work they describe:
    once stderr is gone (its pipe closed, the terminal hung up) they are
    dropped, and the recording, report or export carries on."""

    def __init__(self, stream: Any = None):
        self.stream = stream
        self.broken = False

    def __call__(self, msg: str, end: str = "\n") -> None:
        if self.broken:
            return
        stream = self.stream or sys.stderr
        try:
            stream.write(msg + end)
            stream.flush()
        except (OSError, ValueError):
            self.broken = True
            _silence(stream)


EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def exit_on_signals(signals: tuple[int, ...] = EXIT_SIGNALS) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP end the process the way
    Ctrl-C does, as an exception (SystemExit with status 128 + the signal),
    so every `with OutFile` and `finally` on the way cleans up: no
    temporary file is left behind. Later signals are ignored meanwhile.
    A signal ignored when the block starts (`nohup`) stays ignored."""
    def on_signal(signum: int, frame: Any) -> None:
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    old = {}
    for s in signals:
        h = signal.getsignal(s)
        if h is not signal.SIG_IGN:
            old[s] = signal.signal(s, on_signal)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def exit_quietly() -> int:
    """The status of a writer whose reader went away: as if SIGPIPE had
    ended it (Python ignores SIGPIPE, so writes fail with EPIPE instead)."""
    _silence(sys.stdout)
    return 128 + signal.SIGPIPE


# -- a writer in a process of its own ---------------------------------------

PIPE_BYTES = 1 << 20


class WriterProcess:
    """A forked child that runs `work(batches)`, where `batches` iterates
    over what `send` pickles to it through a pipe, and hands back what
    `work` returns, or the exception that stopped it. The child writes to
    files the parent opened (it inherits them); it ignores INT, TERM and
    HUP: the parent decides, and `kill()`s it on its way out."""

    def __init__(self, work: Callable[[Iterator[Any]], Any]):
        rows_r, rows_w = os.pipe()
        try:
            res_r, res_w = os.pipe()
        except OSError:
            os.close(rows_r)
            os.close(rows_w)
            raise
        try:
            pid = os.fork()
        except OSError:
            for fd in (rows_r, rows_w, res_r, res_w):
                os.close(fd)
            raise
        if pid == 0:    # the writer
            code = 1
            try:
                for s in (signal.SIGINT,) + EXIT_SIGNALS:
                    signal.signal(s, signal.SIG_IGN)
                os.close(rows_w)
                os.close(res_r)
                code = _child_main(work, rows_r, res_w)
            finally:
                os._exit(code)
        os.close(rows_r)
        os.close(res_w)
        self.pid: int | None = pid
        try:
            # Room for a few batches, so the parent runs ahead of the writer.
            fcntl.fcntl(rows_w, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
        except OSError:
            pass
        self._out = os.fdopen(rows_w, "wb")
        self._res: int | None = res_r

    def send(self, batch: Any) -> None:
        try:
            # flushed now: the writer must not wait for the next batch
            pickle.dump(batch, self._out, protocol=pickle.HIGHEST_PROTOCOL)
            self._out.flush()
        except BrokenPipeError:
            self._fail()

    def _result(self) -> Any:
        res, self._res = self._res, None
        assert res is not None
        with os.fdopen(res, "rb") as f:
            data = f.read()
        self._reap()
        if not data:
            raise OSError("the writer process ended without a result")
        return pickle.loads(data)

    def _fail(self) -> None:
        try:
            self._out.close()
        except OSError:
            pass
        kind, val = self._result()
        if kind == "err":
            raise val
        raise OSError("the writer process stopped early")

    def finish(self) -> Any:
        """No more batches: waits for the child; returns `work`'s result."""
        try:
            pickle.dump(None, self._out, protocol=pickle.HIGHEST_PROTOCOL)
            self._out.close()
        except BrokenPipeError:
            self._fail()
        kind, val = self._result()
        if kind == "err":
            raise val
        return val

    def _reap(self) -> None:
        if self.pid is not None:
            pid, self.pid = self.pid, None
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def kill(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self._out.close()
        except OSError:
            pass
        if self._res is not None:
            res, self._res = self._res, None
            os.close(res)
        self._reap()


class Offload:
    """Hands items to a sink made by `make()` (`sink.add(*item)` for each,
    `sink.close()` at the end, which returns the result): in a forked
    `WriterProcess`, batches of items going through a pipe while this
    process makes the next ones, where that is safe (`fork` None: the
    platform forks and no other thread runs, whose locks the child would
    inherit held); otherwise here, in this process. The same sink code runs
    either way, so the output is the same.

    `add(item, size)` counts `size` toward a batch of `batch` (rows, say);
    `close()` returns the sink's result; `abort()` stops, dropping what is
    pending."""

    def __init__(self, make: Callable[[], Any], fork: bool | None = None, batch: int = 2048):
        if fork is None:
            fork = hasattr(os, "fork") and threading.active_count() == 1
        self._child: WriterProcess | None = None
        if fork:
            try:
                self._child = WriterProcess(functools.partial(_run_sink, make))
            except OSError:
                self._child = None
        self._sink = make() if self._child is None else None
        self._batch = batch
        self._pending: list[Any] = []
        self._size = 0

    @property
    def forked(self) -> bool:
        return self._child is not None

    def add(self, item: tuple, size: int = 1) -> None:
        if self._sink is not None:
            self._sink.add(*item)
            return
        self._pending.append(item)
        self._size += size
        if self._size >= self._batch:
            self._send()

    def _send(self) -> None:
        batch, self._pending, self._size = self._pending, [], 0
        if batch and self._child is not None:
            self._child.send(batch)

    def close(self) -> Any:
        if self._sink is not None:
            return self._sink.close()
        self._send()
        child, self._child = self._child, None
        assert child is not None, "closed twice"
        return child.finish()

    def abort(self) -> None:
        if self._child is not None:
            child, self._child = self._child, None
            child.kill()


def _run_sink(make: Callable[[], Any], batches: Iterator[list]) -> Any:
    """The writer process of an Offload."""
    sink = make()
    add = sink.add
    for batch in batches:
        for item in batch:
            add(*item)
    return sink.close()


def _batches(src: Any) -> Iterator[Any]:
    load = pickle.load
    while True:
        batch = load(src)
        if batch is None:
            return
        yield batch


def _child_main(work: Callable[[Iterator[Any]], Any], rows_fd: int, res_fd: int) -> int:
    try:
        with os.fdopen(rows_fd, "rb", buffering=1 << 20) as src:
            result: tuple = ("ok", work(_batches(src)))
        code = 0
    except BaseException as e:      # noqa: BLE001 - handed to the parent
        try:
            pickle.dumps(e)
            result = ("err", e)
        except Exception:           # noqa: BLE001
            result = ("err", OSError(f"the writer process failed: {e!r}"))
        code = 1
    with os.fdopen(res_fd, "wb") as out:
        out.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    return code


__all__ = ["OutFile", "OutputError", "OutputClosed", "NotReplaceable", "InPlace", "open_in_place",
           "check_distinct", "file_id", "write_stdout", "Say", "exit_on_signals", "exit_quietly",
           "WriterProcess", "Offload", "MODE"]

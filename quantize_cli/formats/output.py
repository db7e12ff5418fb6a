"""The file guard: what every command checks before it opens an input or writes an output.

- ``check_input_file``: an input must be a regular file (a FIFO or a device would block in
  ``open()`` or stream forever), checked with ``stat`` before anything opens it.
- ``refuse_overwriting_inputs``: no output may be one of the inputs, in any spelling (``..``,
  symlinks, hard links: compared by device and inode), for every command that writes.
- ``check_writable``: the output's directory exists and is writable, OUT is not a directory,
  not ``dir/``, and not a device or FIFO (renaming over /dev/null as root would replace it).
- ``atomic_outputs``: the output is written into an unnamed file in OUT's directory (Linux
  ``O_TMPFILE``) and given its name only when complete (``linkat`` through /proc/self/fd, then
  ``rename`` over OUT), so even ``kill -9`` leaves nothing behind. Where the filesystem has no
  ``O_TMPFILE`` a named, locked temp file ``.OUT.pyquantize-XXXX.part`` is used instead, and
  the next run in that directory removes such files that no live process holds locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import OutputError, PyquantizeError

TEMP_MARK = ".pyquantize-"
_TEMP_RE = re.compile(r"^\..+\.pyquantize-[A-Za-z0-9_]+\.part$")
STALE_SECONDS = 60  # a named temp file untouched this long and unlocked is a dead run's


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def check_input_file(path: Path, what: str, error: type[PyquantizeError], missing: str = "no such file") -> None:
    """Refuse, before any open(), an input that is missing or not a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except PermissionError:
        raise error(f"{path}: permission denied") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is {_kind(st.st_mode)}, not a {what}; give a regular file")


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(outputs: Iterable[Path], inputs: Iterable[Path | None]) -> None:
    """The one check every writing command makes: no output is one of its inputs (an input
    folder counts with every file directly in it)."""
    files: list[Path] = []
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp)
        if inp.is_dir():
            try:
                files += [p for p in inp.iterdir() if p.is_file()]
            except OSError:
                pass
        else:
            files.append(inp)
    for out in outputs:
        out = Path(out)
        if not os.path.lexists(out):
            continue
        for inp in files:
            if _same(out, inp):
                if str(out) == str(inp):
                    raise OutputError(f"{out}: output is the input file; choose another output name")
                raise OutputError(f"{out}: output is the input file {inp} (the same file by another name); "
                                  "choose another output name")


def check_output_name(text: str) -> None:
    """OUT as typed: 'name/' names a directory (a Path() would drop the slash silently)."""
    if text.endswith("/") or text.endswith(os.sep):
        raise OutputError(f"{text}: names a directory; give a file name for the output")


def check_writable(target: Path) -> None:
    """Everything about OUT that can be known before the first byte is computed."""
    text = str(target)
    if text.endswith(os.sep) or text.endswith("/."):
        raise OutputError(f"{target}: names a directory; give a file name for the output")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"{target}: cannot write output ({exc.strerror or exc})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{target}: is a directory; give a file name for the output")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{target}: is {_kind(st.st_mode)}; the output must be a regular file (or a new name)")
    parent = Path(os.path.abspath(target)).parent
    if not parent.is_dir():
        raise OutputError(f"{target}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{target}: directory {parent} is not writable")


class _Terminated(BaseException):
    pass


class _Temp:
    """One output being written: an unnamed O_TMPFILE (``fd``) or a locked named file."""

    def __init__(self, target: Path):
        self.target = target
        self.directory = Path(os.path.abspath(target)).parent
        self.named: Path | None = None
        self.fd = -1
        mode = 0o666 & ~_umask()
        _remove_stale(self.directory)  # a dead fallback run's file, or one killed between link and rename
        flag = getattr(os, "O_TMPFILE", 0)
        # the unnamed file is reopened and linked through /proc/self/fd: both must be there
        if flag and not os.environ.get("PYQUANTIZE_NO_TMPFILE") and os.path.isdir("/proc/self/fd"):
            try:
                self.fd = os.open(self.directory, flag | os.O_RDWR | os.O_CLOEXEC, mode)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                    raise
        if self.fd < 0:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARK}", suffix=".part", dir=self.directory)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # alive: the next run must not remove it
            self.fd, self.named = fd, Path(name)

    @property
    def path(self) -> Path:
        """A name to open the file by: /proc/self/fd/N reopens the unnamed file itself."""
        return self.named if self.named is not None else Path(f"/proc/self/fd/{self.fd}")

    def commit(self) -> None:
        if self.named is not None:
            os.chmod(self.named, 0o666 & ~_umask())
            os.replace(self.named, self.target)
            self.named = None
            return
        # linkat(AT_SYMLINK_FOLLOW) through /proc gives the unnamed file a name (the temp name
        # exists only between these two calls); rename then replaces OUT atomically
        name = self.directory / f".{self.target.name}{TEMP_MARK}{os.getpid()}_{id(self):x}.part"
        # a dst_dir_fd makes os.link call linkat (plain link() would link the /proc symlink itself)
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(f"/proc/self/fd/{self.fd}", name.name, dst_dir_fd=dir_fd, follow_symlinks=True)
        finally:
            os.close(dir_fd)
        try:
            os.replace(name, self.target)
        except BaseException:
            _unlink(name)
            raise

    def discard(self) -> None:
        if self.named is not None:
            _unlink(self.named)
            self.named = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_stale(directory: Path) -> None:
    """Named temp files of ours that no live process holds (a kill -9 on a filesystem without
    O_TMPFILE) and that are older than STALE_SECONDS are removed."""
    try:
        names = [n for n in os.listdir(directory) if _TEMP_RE.match(n)]
    except OSError:
        return
    now = time.time()
    for n in names:
        p = directory / n
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_SECONDS:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run holds it
            _unlink(p)
        finally:
            os.close(fd)


@contextmanager
def atomic_outputs(targets: list[Path], inputs: Iterable[Path | None] = ()) -> Iterator[list[Path]]:
    """Yield a path to write each target through; on success every target gets its file at
    once, on any failure (Ctrl-C, SIGTERM, an error) nothing is left and the targets are as they
    were. A disk-full or other OSError becomes one OutputError line."""
    inputs = list(inputs)
    for t in targets:
        check_writable(t)
    refuse_overwriting_inputs(targets, inputs)
    temps: list[_Temp] = []

    def on_term(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    try:
        for t in targets:
            temps.append(_Temp(Path(t)))
        yield [tmp.path for tmp in temps]
        refuse_overwriting_inputs(targets, inputs)  # a name may have appeared meanwhile
        for tmp in temps:
            tmp.commit()
        temps_done = temps
        temps = []
        for tmp in temps_done:
            tmp.close()
    except _Terminated:
        raise KeyboardInterrupt("terminated") from None
    except OSError as exc:
        raise OutputError(f"{targets[0]}: cannot write output ({exc.strerror or exc})") from None
    finally:
        for tmp in temps:
            tmp.discard()
            tmp.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

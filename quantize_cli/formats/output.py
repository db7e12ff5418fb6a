"""Atomic output: temporary files beside the targets, renamed over them only when every file is
complete. On any error, Ctrl-C or SIGTERM the temporary files are removed and the targets are
left as they were."""

from __future__ import annotations

import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import OutputError


def check_writable(target: Path) -> None:
    parent = target.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"{target}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{target}: directory {parent} is not writable")
    if target.is_dir():
        raise OutputError(f"{target}: is a directory; give a file name for the output")


class _Terminated(BaseException):
    pass


@contextmanager
def atomic_outputs(targets: list[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths beside each target; rename them all over the targets on success,
    remove them on any failure (including Ctrl-C and SIGTERM)."""
    for t in targets:
        check_writable(t)
    temps: list[Path] = []

    def on_term(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    try:
        for t in targets:
            fd, name = tempfile.mkstemp(prefix=f".{t.name}.", suffix=".part", dir=t.resolve().parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for tmp, t in zip(temps, targets):
            os.chmod(tmp, 0o644 & ~_umask())
            os.replace(tmp, t)
        temps = []
    except _Terminated:
        raise KeyboardInterrupt("terminated") from None
    except OSError as exc:
        raise OutputError(f"{targets[0]}: cannot write output ({exc.strerror or exc})") from None
    finally:
        for tmp in temps:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

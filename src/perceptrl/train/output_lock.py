"""The lock a run holds on its output folder: one run per folder at a time.

``<folder>/.perceptrl.lock`` is a file naming the holder (pid, host, start time, command), held with
``flock``. The kernel releases an ``flock`` when its process dies, even by SIGKILL, so the file a
killed run leaves behind is a stale lock: the next run simply takes it over (``OutputLock.stale``
then holds what it said). The holder deletes the file when it releases the lock, and a run that
locked a file which was deleted meanwhile locks again, so two runs never both hold the folder.
Where there is no ``flock`` (Windows, some network file systems) a lock file whose pid still runs
on this host holds the folder.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from perceptrl.train.command import command_line

LOCK_FILE = ".perceptrl.lock"


class FolderInUse(ValueError):
    """Another live run holds the output folder; the message names its pid, host and command."""



def holder_text(info: dict) -> str:
    when = info.get("started")
    started = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else ""
    command = f": {info['command']}" if info.get("command") else ""
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}{started}{command}"


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def _flock(fd: int, exclusive: bool) -> bool | None:
    """Try to ``flock`` without waiting: True locked, False held by another, None no flock here."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except OSError as err:
        return False if err.errno in _BUSY else None  # ENOLCK, EOPNOTSUPP: a file system without flock


def _unlock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def _live_on_this_host(info: dict) -> bool:
    return info.get("host") == socket.gethostname() and _pid_alive(info.get("pid"))


class OutputLock:
    """``<folder>/.perceptrl.lock``, held with ``flock`` (released by the kernel when the process dies).

    Where there is no ``flock`` (Windows, some network file systems), a lock file whose process still
    runs on this host holds the folder, and one whose process is gone is taken over.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / LOCK_FILE
        self.fd: int | None = None
        self.stale: dict | None = None  # what a killed run's lock said, when we took it over

    def in_use_by(self) -> dict | None:
        """The holder's info if another live process holds the lock; changes nothing on disk."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            got, info = _flock(fd, exclusive=False), _read_info(fd)
            if got:
                _unlock(fd)
                return None
            if got is False:
                return info or {"pid": "?"}
            return info if _live_on_this_host(info) else None
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Hold the folder, or raise FolderInUse naming the run that holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            got = _flock(fd, exclusive=True)
            previous = _read_info(fd)
            if got is False or (got is None and _live_on_this_host(previous)):
                os.close(fd)
                self._refuse(previous or {"pid": "?"})
            if got:
                try:  # a releasing run unlinks the file: make sure we locked the one at the path
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            self.stale = previous or None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": command_line()}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(info).encode())
            self.fd = fd
            return

    def _refuse(self, holder: dict) -> None:
        raise FolderInUse(f"train.output_dir: {self.folder} is in use by another perceptrl run ({holder_text(holder)}); "
                          "wait for it to end or choose another train.output_dir")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it (see acquire)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

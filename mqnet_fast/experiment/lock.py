"""Locks between processes on one machine's (or one shared) file system, with flock(2): the kernel
releases a lock when its process ends in any way (SIGKILL included), so a lock whose process is gone
is never in the way. Lock files are kept (removing one races with a process about to take it) and
hold the holder's pid, host, start time and command, for the message of whoever finds it taken."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from mqnet_fast.io import RunFileError, write_hint


class Locked(Exception):
    """A lock another process holds; str() names the holder."""


class FileLock:
    """One lock file. `acquire(shared, wait)`: shared locks coexist, an exclusive one excludes all;
    without `wait` a taken lock raises Locked at once. Where the folder is read-only and the file
    missing, the lock is a no-op (nothing can be written there, by this process or the holder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd: int | None = None
        self.writable = True

    def _open(self) -> int | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise self._error("cannot create", err) from None
        self.writable = False
        try:
            return os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise self._error("cannot open", err) from None

    def _error(self, doing: str, err: OSError) -> Exception:
        if err.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return RunFileError(f"cannot lock {str(self.path)!r}: its file system does not support flock(2) "
                                f"({err.strerror}); give a --run-dir on a local file system")
        return RunFileError(f"{doing} the lock file {str(self.path)!r}: {err.strerror}{write_hint(err)}")

    def acquire(self, *, shared: bool = False, wait: bool = False, on_wait=None) -> None:
        if self.fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        fd = self._open()
        if fd is None:
            return
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise Locked(self.holder(fd)) from None
                if on_wait is not None:
                    on_wait(self.holder(fd))
                fcntl.flock(fd, mode)
            if not shared and self.writable:
                record = {"pid": os.getpid(), "host": socket.gethostname(),
                          "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError as err:
            os.close(fd)  # releases the flock if it was taken
            raise self._error("cannot take", err) from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def holder(self, fd: int | None = None) -> str:
        """Who holds the lock, as its file says (the last exclusive holder)."""
        try:
            text = os.pread(fd if fd is not None else self.fd, 4096, 0).decode()
            record = json.loads(text)
            return (f"process {record['pid']} on {record['host']} since {record['since']} "
                    f"({record['command']})")
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

"""The start-up check of ``server.data_dir``: it must exist (it is created, mode 0700)
and take a write, or the gateway refuses to start with one line that says why.

The gateway writes there at start (the embedded database, the mail sealing key, the
embedded database's credentials) and at exit (the usage spool). A read-only or full
``data_dir`` used to surface as an ``OSError`` traceback from whichever plugin touched
it first, or worse, at exit, as usage lost. The probe writes and fsyncs a small file and
removes it. Less than ``MIN_FREE`` (``MIN_FREE_EMBEDDED`` with the embedded database)
left is refused too; less than ``LOW_SPACE_BYTES`` is worth a warning.
"""
from __future__ import annotations

import errno
import logging
import os

from gateway.config import ConfigError

log = logging.getLogger("allyoucantoken")

PROBE_BYTES = 64 * 1024            # about one spool file of a few hundred rollups
MIN_FREE = 512 * 1024              # the usage spool's reserve, keys, and some margin
MIN_FREE_EMBEDDED = 4 * 1024 * 1024   # the embedded database too (its WAL alone: 4 MiB)
LOW_SPACE_BYTES = 64 * 1024 * 1024

_WHY = {errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.ENOTDIR: "a part of the path is not a directory"}


class DataDirError(ConfigError):
    """``server.data_dir`` cannot be written."""


def check(config) -> None:
    """The start-up check of ``config.server.data_dir`` (see the module)."""
    ensure_writable(config.server.data_dir,
                    MIN_FREE if config.database.uri else MIN_FREE_EMBEDDED)


def ensure_writable(path: str, min_free: int = MIN_FREE) -> None:
    """Create ``path`` (0700) if needed and prove it takes a write, with ``min_free``
    bytes free; raise :class:`DataDirError` (one line: the path and the reason) when
    it does not."""
    probe = os.path.join(path, f".write-probe-{os.getpid()}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        why = _WHY.get(exc.errno, exc.strerror or type(exc).__name__)
        raise DataDirError(f"server.data_dir {path!r} is not writable: {why}; the gateway "
                           "keeps its database, keys and usage spool there") from None
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass
    try:
        st = os.statvfs(path)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < min_free:
        raise DataDirError(f"server.data_dir {path!r} has only {free / 2**20:.1f} MiB free; "
                           f"the gateway needs at least {min_free / 2**20:.1f} MiB there")
    if free < LOW_SPACE_BYTES:
        log.warning("server.data_dir %s has only %.1f MiB free: usage is held in memory "
                    "while the disk is full, and lost at exit if it stays full", path,
                    free / 2**20)

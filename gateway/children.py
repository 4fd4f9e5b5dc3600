"""Child processes that never outlive the gateway (Linux ``PR_SET_PDEATHSIG``)."""
from __future__ import annotations

import asyncio
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """In a child (a ``preexec_fn``, or right after ``fork``): the kernel sends ``signum``
    when the parent thread that started it dies, even by SIGKILL. Elsewhere a no-op (the
    children also poll their parent id)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):
        pass


def die_with_parent_by_sigkill() -> None:
    """:func:`die_with_parent` with SIGKILL (a model worker: native code may not stop on
    SIGTERM), for ``preexec_fn``."""
    die_with_parent(signal.SIGKILL)


async def until_stopped_or_orphaned(stop, interval: float = 1.0) -> None:
    """Wait until ``stop`` (an ``asyncio.Event``) is set, or the parent process is gone
    (the parent id changes: a child that missed PR_SET_PDEATHSIG still exits)."""
    parent = os.getppid()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            if os.getppid() != parent:
                return

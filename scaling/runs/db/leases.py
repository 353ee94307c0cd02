"""Leases on runs: who holds a running claim, and when a claim counts as abandoned."""

from __future__ import annotations

import os
import socket

LEASE_S = 600.0  # a running claim with no heartbeat for this long is taken over


def owner_id() -> str:
    """This process's name as a claim holder: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def abandoned(owner: str | None, heartbeat: float | None, now: float) -> bool:
    """A running claim whose process is gone (same host) or silent past the lease."""
    if owner is None:
        return True
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return heartbeat is None or now - heartbeat > LEASE_S

"""The Ray executor: each run of a sweep is a Ray task, and only the driver touches the store.

A task receives the run's config and its last checkpoint (as bytes), trains in a scratch
folder on whichever node Ray picked, and streams :func:`scaling.runs.events.run_events` back as a
Ray streaming generator: logged points, checkpoints (as bytes) and the final summary. The
driver (the ``moeplan sweep run`` process) claims runs in the store, writes every event into
it and keeps the checkpoints beside it, so workers need no access to the store or to any
shared file system, and a run interrupted anywhere resumes from its last streamed checkpoint.

Nodes need moeplan importable (the same image, or a Ray ``runtime_env``).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scaling.errors import UserError
from scaling.runs.events import record_event, run_events
from scaling.runs.spec import RunConfig
from scaling.runs.store import RunStore, owner_id


def train_remotely(
    run: RunConfig, checkpoint: bytes | None, threads: int, discard_corrupt: bool = False
) -> Iterator[tuple[str, Any]]:
    """The body of a Ray task: train ``run`` from ``checkpoint`` and stream its events."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix=f"moeplan-{run.run_id}-") as scratch:
        folder = Path(scratch)
        if checkpoint is not None:
            (folder / "checkpoint.pt").write_bytes(checkpoint)
        try:
            for kind, payload in run_events(run, folder, discard_corrupt):
                if kind == "checkpoint":
                    payload = Path(payload).read_bytes()
                yield kind, payload
        except Exception as error:  # sent as an event, so the driver records a clean message
            yield "failed", f"{type(error).__name__}: {error}"


class RayCluster:
    """A connection to a Ray cluster (or a local Ray runtime) that runs sweeps on it."""

    def __init__(self, ray: Any, concurrency: int, threads: int, started_here: bool) -> None:
        self.ray, self.concurrency, self.threads, self.started_here = ray, concurrency, threads, started_here
        self.task = ray.remote(num_returns="streaming", num_cpus=threads)(train_remotely)

    @classmethod
    def connect(cls, address: str | None, workers: int | None) -> RayCluster:
        """Connect to ``address`` (``auto``, ``HOST:PORT`` or ``ray://...``), or start a local runtime.

        Args:
            address: The cluster; ``None`` starts a Ray runtime on this machine.
            workers: Runs in flight at once; ``None`` fills the cluster's CPUs.
        """
        try:
            import ray
        except ImportError:
            raise UserError("the ray executor needs Ray: pip install 'moeplan[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            _check_reachable(address)
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise UserError(
                    f"cannot connect to Ray at {address or 'a new local runtime'!r}: {reason}; "
                    "check --ray-address (HOST:PORT, ray://HOST:PORT or auto)"
                ) from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        node_cpus = max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]), default=1)
        concurrency = workers or max(1, cpus)
        threads = max(1, min(node_cpus, cpus // concurrency))
        return cls(ray, concurrency, threads, started_here)

    def run(
        self,
        store: RunStore,
        runs: list[RunConfig],
        retry_failed: bool,
        checkpoint_root: Path,
        on_progress: Callable[[], None],
    ) -> None:
        """Claim and run every claimable run, ``concurrency`` at a time, until none is left."""
        owner = owner_id()
        pending = iter(runs)

        def drive() -> None:  # one driver thread per run in flight
            for run in pending:
                if store.claim(run.run_id, owner, retry_failed):
                    self._drive(store, run, owner, checkpoint_root, retry_failed)
                    on_progress()

        with ThreadPoolExecutor(self.concurrency) as threads:
            for future in [threads.submit(drive) for _ in range(self.concurrency)]:
                future.result()

    def _drive(
        self, store: RunStore, run: RunConfig, owner: str, checkpoint_root: Path, discard_corrupt: bool = False
    ) -> None:
        checkpoint = checkpoint_root / run.run_id / "checkpoint.pt"
        previous = checkpoint.read_bytes() if checkpoint.exists() else None
        try:
            for reference in self.task.remote(run, previous, self.threads, discard_corrupt):
                kind, payload = self.ray.get(reference)
                if kind == "failed":
                    store.fail(run.run_id, owner, payload)
                    return
                if kind == "checkpoint":
                    _write_atomically(checkpoint, payload)
                    continue
                record_event(store, run.run_id, owner, kind, payload, checkpoint)
        except self.ray.exceptions.RayError as error:  # a lost node or worker: recorded, sweep goes on
            store.fail(run.run_id, owner, f"{type(error).__name__}: {str(error).splitlines()[0]}")

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise UserError(
            f"cannot connect to Ray at {address!r}: {error.strerror or error}; "
            "check --ray-address (HOST:PORT, ray://HOST:PORT or auto) and that the cluster is up"
        ) from None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    os.replace(partial, path)  # a kill mid-write leaves the previous checkpoint intact

"""Training a proxy: AdamW, warmup + cosine or WSD decay, clipping, fp32 or bf16, exact resume.

Determinism: the batch of step s is a pure function of (seed, s) (:func:`scaling.train.corpus.batch_at`)
and checkpoints carry the model, the optimizer and the RNG state, so a run killed at any
moment and resumed from its last checkpoint produces the same loss curve bit for bit. On CUDA
that needs torch's deterministic kernels, which a run turns on for its process
(:func:`use_deterministic_kernels`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scaling.errors import UserError
from scaling.proxy.model import MoE, ProxyConfig, ProxyModel
from scaling.shape.arch import ArchSpec
from scaling.train.allocator import retain_freed_memory
from scaling.train.config import TrainConfig
from scaling.train.corpus import Corpus, batch_at, validation_windows
from scaling.train.utilisation import layer_summary


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based)."""
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return peak
    if config.schedule == "cosine":
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = config.steps - int(round(config.decay_fraction * config.steps))
    if step < decay_start:
        return peak
    progress = (step - decay_start + 1) / max(1, config.steps - decay_start)
    return peak - (peak - floor) * min(1.0, progress)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def use_deterministic_kernels(device: torch.device) -> None:
    """On CUDA, make torch pick deterministic kernels, so that a resumed run repeats its curve.

    The CPU kernels used here are deterministic already. On CUDA some, ``index_add_`` (the MoE
    combine) among them, add with atomics unless torch is asked for its deterministic versions,
    and cuBLAS needs a fixed workspace (read before its first use). An op with no deterministic
    kernel then fails loudly rather than drifting silently.
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # NaN-filling every empty() costs time


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms and biases)."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": config.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)


# Settings that shape the trajectory: a checkpoint resumes only under the same ones. Intervals of
# logging, evaluation and checkpoints, the device, the thread count and the dispatch path do not
# change what is trained, so a resume may change them.
EXECUTION_ONLY = ("eval_interval", "log_interval", "checkpoint_interval", "device", "threads", "dispatch")


def run_identity(arch: ArchSpec, config: TrainConfig, corpus_fingerprint: str) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the shape, the trajectory's settings, the corpus."""
    train = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_ONLY}
    return {"arch": arch.canonical(), "train": train, "corpus": corpus_fingerprint}


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def unreadable_reason(error: Exception) -> str:
    """Why ``load_state`` refused a file, in one short clause: torch's own message for a file that
    needs code to load ends in advice to load it unsafely, which moeplan never does."""
    text = " ".join(str(error).split())
    if "weights only load failed" in text.lower() or type(error).__name__ == "UnpicklingError":
        return "it holds objects other than tensors and plain values, which would run code to load"
    return text[:160] or type(error).__name__


def load_state(path: str | Path) -> Any:
    """A checkpoint's contents, on the CPU: tensors and plain types only (``weights_only``), so a
    crafted file cannot run code; a pickle that asks for anything else raises."""
    with warnings.catch_warnings():  # torch warns about legacy pickles before refusing them
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def _plain(value: Any) -> Any:
    """Tensors and JSON's types only (what ``torch.load(weights_only=True)`` reads back)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed: unreadable, or made by a different run."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    history: list[dict[str, Any]]
    final_train_loss: float
    final_val_loss: float
    tokens: int
    elapsed_s: float
    resumed_from_step: int
    routing: list[dict[str, Any]]


Callback = Callable[[dict[str, Any]], None]


class Trainer:
    """Trains one proxy on a corpus, checkpointing into ``checkpoint_dir`` when given."""

    def __init__(
        self,
        arch: ArchSpec,
        config: TrainConfig,
        corpus: Corpus,
        checkpoint_dir: str | Path | None = None,
        discard_corrupt: bool = False,
        checkpoint_every_s: float | None = None,
    ) -> None:
        """
        Args:
            arch, config, corpus: What to train, how, and on what text.
            checkpoint_dir: Checkpoint here, and resume from the checkpoint found here.
            discard_corrupt: A checkpoint that cannot be read is set aside (``checkpoint.pt.corrupt``)
                and the run starts over, instead of being refused (a sweep's ``--retry-failed``).
            checkpoint_every_s: Also checkpoint when this many seconds passed since the last one.
        """
        if arch.vocab_size < 256:
            raise UserError(f"vocab_size={arch.vocab_size} is below the 256 byte tokens of the corpus")
        corpus.check_seq_len(config.seq_len)
        self.arch, self.config, self.corpus = arch, config, corpus
        self.device = resolve_device(config.device)
        use_deterministic_kernels(self.device)
        retain_freed_memory()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.checkpoint_path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir else None
        if self.checkpoint_path is not None:
            _check_writable(self.checkpoint_path.parent)
        self.identity = run_identity(arch, config, corpus.fingerprint)
        self.checkpoint_every_s = checkpoint_every_s
        self.last_checkpoint = time.perf_counter()
        torch.manual_seed(config.seed)
        proxy = ProxyConfig(
            arch=arch,
            aux_loss_weight=config.aux_loss_weight,
            z_loss_weight=config.z_loss_weight,
            dispatch=config.dispatch,
            max_seq_len=max(config.seq_len, 16),
        )
        self.model = ProxyModel(proxy).to(self.device)
        self.optimizer = build_optimizer(self.model, config)
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict[str, Any]] = []
        self.last_routing: list[dict[str, Any]] = []
        self.resumed_from_step = 0
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            self._load_checkpoint(discard_corrupt)

    # --- checkpoints ------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "history": _plain(self.history),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "config": _plain(self.config.to_dict()),
            "arch": _plain(self.arch.to_dict()),
            "identity": _plain(self.identity),
            "identity_hash": identity_hash(self.identity),
        }
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.checkpoint_path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, self.checkpoint_path)  # a kill mid-write leaves the old one intact

    def _load_checkpoint(self, discard_corrupt: bool = False) -> None:
        path = self.checkpoint_path
        try:
            # on the CPU: the RNG states must stay CPU byte tensors, and load_state_dict moves the
            # model's and the optimizer's tensors to where the parameters are
            state = load_state(path)
            fields = [state[key] for key in ("model", "optimizer", "step", "elapsed", "history", "cpu_rng", "arch")]
        except Exception as error:  # truncated, empty or not a checkpoint: torch raises many types
            if discard_corrupt:
                os.replace(path, path.with_name(path.name + ".corrupt"))  # kept for a post-mortem
                return
            reason = unreadable_reason(error)
            raise CheckpointError(
                f"checkpoint {str(path)!r} cannot be read (truncated or empty?): {reason}; delete it to start over "
                "(a sweep: rerun with --retry-failed, which sets it aside)"
            ) from None
        self._check_identity(state)
        model, optimizer, step, elapsed, history, cpu_rng, _ = fields
        self.model.load_state_dict(model)
        self.optimizer.load_state_dict(optimizer)
        self.step, self.elapsed, self.history = step, elapsed, history
        torch.set_rng_state(cpu_rng)
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.resumed_from_step = self.step

    def _check_identity(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of another run, naming what differs (older checkpoints: by their config)."""
        path = self.checkpoint_path
        if state["arch"] != self.arch.to_dict() and state.get("identity", {}).get("arch") != self.arch.canonical():
            raise CheckpointError(f"checkpoint {str(path)!r} belongs to a different architecture")
        if state.get("identity_hash") == identity_hash(self.identity):
            return
        stored = state.get("identity") or {
            "train": {k: v for k, v in state.get("config", {}).items() if k not in EXECUTION_ONLY},
            "corpus": self.identity["corpus"],  # not recorded before: assume the same text
        }
        changes = [
            f"{key} {stored['train'].get(key)!r} -> {value!r}"
            for key, value in self.identity["train"].items()
            if stored["train"].get(key) != value
        ]
        if stored.get("corpus") != self.identity["corpus"]:
            changes.append("the corpus")
        if changes:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was trained with other settings ({', '.join(changes)}); resuming would "
                "continue a different run: give the same settings, or another --checkpoint-dir"
            )

    # --- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy (nats/byte) on fixed held-out windows.

        Also counts each MoE layer's expert assignments on those windows; they are in
        :attr:`last_routing` (one :func:`scaling.train.utilisation.layer_summary` per MoE layer).
        """
        self.model.eval()
        moe_layers = [(i, block.mlp) for i, block in enumerate(self.model.blocks) if isinstance(block.mlp, MoE)]
        for _, layer in moe_layers:
            layer.observe_routing(True)
        inputs, targets = validation_windows(self.corpus.val, self.config.eval_windows, self.config.seq_len)
        losses = []
        for start in range(0, len(inputs), self.config.batch_size):
            x = torch.from_numpy(inputs[start : start + self.config.batch_size]).to(self.device)
            y = torch.from_numpy(targets[start : start + self.config.batch_size]).to(self.device)
            with self._autocast():
                _, loss = self.model(x, y)
            losses.append(loss.float().item() * len(x))
        self.last_routing = [
            layer_summary(i, layer.load_counts.tolist(), layer.z_loss_sum, layer.observed_tokens)
            for i, layer in moe_layers
        ]
        for _, layer in moe_layers:
            layer.observe_routing(False)
        self.model.train()
        return sum(losses) / len(inputs)

    def _autocast(self):
        enabled = self.config.dtype == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # --- the loop ---------------------------------------------------------------------------
    def train_step(self, step: int) -> float:
        config = self.config
        x, y = batch_at(self.corpus.train, step, config.batch_size, config.seq_len, config.seed)
        x = torch.from_numpy(x).to(self.device, non_blocking=True)
        y = torch.from_numpy(y).to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        with self._autocast():
            _, loss = self.model(x, y)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.model.last_lm_loss

    def iterate(self) -> Iterator[tuple[str, Any]]:
        """Train to ``config.steps``, yielding ``("point", point)`` for every logged point and
        ``("checkpoint", path)`` after every checkpoint is written.

        A generator, so that a caller elsewhere (a Ray task) can stream progress as it happens.
        """
        config = self.config
        tokens_per_step = config.batch_size * config.seq_len
        self.model.train()
        started = time.perf_counter() - self.elapsed
        while self.step < config.steps:
            step = self.step
            lm_loss = self.train_step(step)
            self.step = step + 1
            last = self.step == config.steps
            if self.step % config.log_interval == 0 or self.step % config.eval_interval == 0 or last:
                train_loss = float(lm_loss)
                if not math.isfinite(train_loss):
                    raise FloatingPointError(f"training loss is {train_loss} at step {self.step}")
                val_loss = self.evaluate() if (self.step % config.eval_interval == 0 or last) else None
                self.elapsed = time.perf_counter() - started
                point = {
                    "step": self.step,
                    "tokens": self.step * tokens_per_step,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "lr": learning_rate(config, step),
                    "elapsed": self.elapsed,
                }
                if val_loss is not None and self.last_routing:
                    point["routing"] = self.last_routing
                self.history.append(point)
                yield "point", point
            due = self.checkpoint_every_s is not None and (
                time.perf_counter() - self.last_checkpoint >= self.checkpoint_every_s
            )
            if self.checkpoint_path is not None and (
                last or due or (config.checkpoint_interval and self.step % config.checkpoint_interval == 0)
            ):
                self.elapsed = time.perf_counter() - started
                self._save_checkpoint()
                self.last_checkpoint = time.perf_counter()
                yield "checkpoint", self.checkpoint_path

    def result(self) -> TrainResult:
        """The finished run's summary (after :meth:`iterate` or :meth:`run`)."""
        finals = [p for p in self.history if p["val_loss"] is not None]
        return TrainResult(
            history=self.history,
            final_train_loss=self.history[-1]["train_loss"],
            final_val_loss=finals[-1]["val_loss"],
            tokens=self.config.steps * self.config.batch_size * self.config.seq_len,
            elapsed_s=self.elapsed,
            resumed_from_step=self.resumed_from_step,
            routing=finals[-1].get("routing", []),
        )

    def run(self, callback: Callback | None = None) -> TrainResult:
        """Train to ``config.steps``, calling ``callback`` with every logged point."""
        for kind, payload in self.iterate():
            if kind == "point" and callback is not None:
                callback(payload)
        return self.result()


def _check_writable(folder: Path) -> None:
    """Make the checkpoint folder and write a scratch file in it, so that a place where no checkpoint
    can be saved is refused before training, not at the first save."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".moeplan-probe-"):
            pass
    except OSError as error:
        raise UserError(
            f"cannot write checkpoints to {str(folder)!r}: {error.strerror or error}; choose a writable folder"
        ) from None


def train(
    arch: ArchSpec,
    config: TrainConfig,
    corpus: Corpus,
    checkpoint_dir: str | Path | None = None,
    callback: Callback | None = None,
) -> TrainResult:
    """Train (or resume) one proxy and return its history."""
    return Trainer(arch, config, corpus, checkpoint_dir).run(callback)

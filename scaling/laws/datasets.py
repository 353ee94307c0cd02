"""Published datasets, loaded by name, and put into moeplan's canonical columns.

Each dataset is one file pinned by SHA-256, with its public origin. :func:`locate` looks for
it, in order:

1. the folders of ``data_dir`` or ``$MOEPLAN_DATA`` (several, separated by ``os.pathsep``);
2. the package's own ``data/`` folder, which holds only files whose licence allows shipping
   them (the over-training runs, MIT, with their licence notice beside them);
3. the user cache (``$MOEPLAN_CACHE/datasets``);
4. with ``$MOEPLAN_DATA_DOWNLOAD`` set, a download from the pinned public source (``1``), or
   from a mirror whose base URL it gives, into the user cache.

A missing file gets a one-line error that says where to put it and where it comes from; a file
whose digest differs from the pin is refused. No content of the unlicensed files is copied into
the code.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.cache import cache_dir
from scaling.errors import UserError

PACKAGE_DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class PublishedDataset:
    """One published file: where it comes from, its digest, and whether it may be shipped."""

    name: str
    filename: str
    sha256: str
    origin: str
    url: str | None = None
    licence: str | None = None
    loss_unit: str | None = None

    @property
    def shipped(self) -> bool:
        return (PACKAGE_DATA / self.filename).is_file()


DATASETS = {
    dataset.name: dataset
    for dataset in (
        PublishedDataset(
            "chinchilla",
            "chinchilla_fig4_points.csv",
            "193478df4e90f040016431996c45682659306840ecdadf83cfb9cd5ca0aa1b30",
            "epoch-research/analyzing-chinchilla, commit 9225883, data/svg_extracted_data.csv "
            "(Epoch AI's extraction of Hoffmann et al. 2022, Figure 4); no licence stated",
            url="https://raw.githubusercontent.com/epoch-research/analyzing-chinchilla/9225883/data/svg_extracted_data.csv",
            loss_unit="nats/token (Chinchilla SentencePiece 32k, MassiveText train)",
        ),
        PublishedDataset(
            "routed_moe",
            "routed_moe_runs.csv",
            "6d43d745d6b16a4fdbfc09a019b0b1e4788d7b01e338becad7535c55cc7eb032",
            "linhaowei1/SLD, commit bf7e8e3, data/moe_scaling_law/data.csv, without its largest size "
            "(Clark et al. 2022's routed runs); no licence stated",
            loss_unit="nats/token (Clark et al. SentencePiece 32k, MassiveText validation)",
        ),
        PublishedDataset(
            "overtraining",
            "overtraining_openlm_runs.csv",
            "79ee3e8ab180c4a18c77fe7ec2b60a40a4bc2ba63b06d35c2cef430237753779",
            "mlfoundations/scaling, commit a003c49, exp_data/models/*.json, one row per file "
            "(Gadre et al. 2024); MIT licence",
            licence="MIT",
            loss_unit="nats/token (GPT-NeoX-20B, C4 validation)",
        ),
        PublishedDataset(
            "ptq_published",
            "ptq_published.csv",
            "8917161b43c1a724f1129ec8c243847c26b355b37bff16b4c6855a8393303449",
            "published perplexities before and after post-training weight quantisation (GPTQ paper tables, "
            "IST-DASLab/gptq, LLaMA3-Quantization, llama.cpp perplexity READMEs, Catalan-Tatjer et al. 2025's "
            "figures, MoEQuant tables), each row citing its source; gathered for moeplan, no licence stated",
            loss_unit="nats/token (each model's own tokenizer and evaluation set)",
        ),
        PublishedDataset(
            "phone_measurements",
            "published_measurements.csv",
            "392950055e905e37825a60314d117f3c120472c4103d46c7d19e543fedb0151d",
            "published on-device LLM speeds (ExecuTorch, Qualcomm AI Hub, llama.cpp, MLC), each row citing "
            "its source; gathered for moeplan, no licence stated",
        ),
        PublishedDataset(
            "phone_specs",
            "phone_specs.csv",
            "e838ffc26bacb46043f24294d17abcea864c922bfbec8fa8c4165b3742aca194",
            "phone hardware facts (vendor specs, teardowns), each row citing its source; gathered for moeplan, "
            "no licence stated",
        ),
    )
}


class DatasetMissing(UserError):
    """A published dataset that is in none of the places moeplan looks."""


def get_dataset(name: str) -> PublishedDataset:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def search_folders(data_dir: str | Path | None = None) -> list[Path]:
    """The folders :func:`locate` looks in, in order."""
    given = str(data_dir) if data_dir is not None else os.environ.get("MOEPLAN_DATA", "")
    folders = [Path(part) for part in given.split(os.pathsep) if part]
    return [*folders, PACKAGE_DATA, cache_dir() / "datasets"]


def locate(name: str, data_dir: str | Path | None = None) -> Path:
    """The verified file of dataset ``name`` (see the module docstring for where it is looked for)."""
    dataset = get_dataset(name)
    for folder in search_folders(data_dir):
        path = folder / dataset.filename
        if path.is_file():
            _verify(path, dataset)
            return path
    download = os.environ.get("MOEPLAN_DATA_DOWNLOAD")
    if download:
        return _download(dataset, None if download == "1" else download)
    where = "the source's URL" if dataset.url is None else dataset.url
    raise DatasetMissing(
        f"dataset {name!r} ({dataset.filename}) is missing: put the file in a folder named by --data-dir or "
        f"MOEPLAN_DATA, or in {cache_dir() / 'datasets'}; it comes from {dataset.origin} ({where})"
    )


def available(name: str, data_dir: str | Path | None = None) -> bool:
    """Whether :func:`locate` finds the dataset without downloading it."""
    dataset = get_dataset(name)
    return any((folder / dataset.filename).is_file() for folder in search_folders(data_dir))


def read_csv(name: str, data_dir: str | Path | None = None) -> pd.DataFrame:
    return pd.read_csv(locate(name, data_dir))


@cache
def _digest(path: Path, size: int, mtime: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verify(path: Path, dataset: PublishedDataset) -> None:
    stat = path.stat()
    digest = _digest(path, stat.st_size, stat.st_mtime_ns)
    if digest != dataset.sha256:
        raise UserError(
            f"dataset file {str(path)!r} has SHA-256 {digest[:12]}..., not the pinned {dataset.sha256[:12]}...; "
            f"replace it with the file from {dataset.origin}"
        )


def _download(dataset: PublishedDataset, mirror: str | None) -> Path:
    if mirror is None and dataset.url is None:
        raise DatasetMissing(
            f"dataset {dataset.name!r} ({dataset.filename}) has no single public URL to download: it comes from "
            f"{dataset.origin}; put the file in a folder named by MOEPLAN_DATA"
        )
    url = f"{mirror.rstrip('/')}/{dataset.filename}" if mirror else dataset.url
    target = cache_dir() / "datasets" / dataset.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except OSError as error:
        raise DatasetMissing(f"cannot download dataset {dataset.name!r} from {url}: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != dataset.sha256:
        raise UserError(
            f"downloaded {url} has SHA-256 {digest[:12]}..., not the pinned {dataset.sha256[:12]}...; not kept"
        )
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


# --- the datasets in canonical columns --------------------------------------------------------------
def chinchilla_points(data_dir: str | Path | None = None, drop_highest: int = 5) -> pd.DataFrame:
    """Hoffmann et al. Figure 4 points (Epoch AI's extraction): N, C, D = C/(6N), loss.

    The replication (Besiroglu et al. 2024) drops the 5 points with the highest loss.
    """
    raw = read_csv("chinchilla", data_dir)
    frame = pd.DataFrame({"N": raw["Model Size"], "C": raw["Training FLOP"], "loss": raw["loss"]})
    frame["D"] = frame["C"] / (6 * frame["N"])
    frame = frame.sort_values("loss")
    frame = frame.iloc[: len(frame) - drop_highest].reset_index(drop=True)
    return frame.assign(loss_unit=DATASETS["chinchilla"].loss_unit)


def routed_moe_runs(
    data_dir: str | Path | None = None,
    routers: tuple[str, ...] = ("Dense", "S-Base"),
    checkpoints: str = "final",
    min_step: int = 50_000,
) -> pd.DataFrame:
    """Clark et al.-style routed runs: N (dense-equivalent), N_total, E, G=1, k=1, D, C, loss, run.

    D is C / (6 N) with C = flops_per_step x step. ``checkpoints="final"`` keeps each run's
    last checkpoint; ``"all"`` keeps checkpoints from ``min_step`` on.
    """
    raw = read_csv("routed_moe", data_dir)
    raw = raw[raw["router_type"].isin(routers) & raw["loss_validation"].notna()]
    final = checkpoints == "final"
    raw = raw.loc[raw.groupby("hyper_id")["step"].idxmax()] if final else raw[raw["step"] >= min_step]
    compute = raw["flops_per_step"].astype(float) * raw["step"].astype(float)
    frame = pd.DataFrame(
        {
            "N": raw["dense_parameter_count"],
            "N_total": raw["total_parameter_count"],
            "E": raw["num_experts"].astype(float),
            "G": 1.0,
            "k": 1.0,
            "S": 0.0,
            "C": compute,
            "D": compute / (6 * raw["dense_parameter_count"]),
            "loss": raw["loss_validation"],
            "loss_unit": DATASETS["routed_moe"].loss_unit,
            "run": raw["hyper_id"],
            "router": raw["router_type"],
            "size_label": raw["model_size_label"],
            "step": raw["step"],
        }
    )
    return frame.reset_index(drop=True)


def overtraining_runs(
    data_dir: str | Path | None = None, dataset: str = "c4_original", loss: str = "loss_c4_val"
) -> pd.DataFrame:
    """Gadre et al. 2024 open_lm runs: N, D, C = 6 N D (in float: int64 overflows), loss on one set."""
    raw = read_csv("overtraining", data_dir)
    raw = raw[raw["dataset_name"] == dataset]
    frame = pd.DataFrame(
        {
            "N": raw["params"],
            "D": raw["tokens"],
            "loss": raw[loss],
            "multiplier": raw["chinchilla_multiplier"],
            "run": raw["name"],
        }
    )
    frame["C"] = 6.0 * frame["N"].astype(float) * frame["D"].astype(float)
    frame["loss_unit"] = DATASETS["overtraining"].loss_unit
    return frame[np.isfinite(frame["loss"])].reset_index(drop=True)

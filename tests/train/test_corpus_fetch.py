"""Issue 33: the built-in corpora's archives are fetched by digest (no pip, no build), with
progress, under a lock. A real HTTP server on 127.0.0.1 plays the package index; nothing here
reaches the internet."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import socket
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scaling.train.corpus_fetch import Progress, building, fetch_archive, index_urls

REPO = Path(__file__).resolve().parents[2]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the server's access log would clutter the test output
        pass


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A PEP 503 index on 127.0.0.1 serving ``tmp_path/site``; pip's configuration points at it."""
    site = tmp_path / "site"
    site.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    yield site
    server.shutdown()
    server.server_close()


def _publish(site: Path, project: str, filename: str, data: bytes, listed_sha256: str | None = None) -> str:
    """Put ``filename`` on the index, listed with ``listed_sha256`` (its true digest unless given)."""
    (site / "files").mkdir(exist_ok=True)
    (site / "files" / filename).write_bytes(data)
    page = site / "simple" / project
    page.mkdir(parents=True)
    digest = listed_sha256 or hashlib.sha256(data).hexdigest()
    (page / "index.html").write_text(f'<html><body><a href="../../files/{filename}#sha256={digest}">{filename}</a>')
    return hashlib.sha256(data).hexdigest()


def test_an_sdist_is_fetched_from_the_configured_index_with_progress(index, tmp_path, capsys):
    data = os.urandom(3 << 20)  # three chunks: progress is counted as it streams
    sha256 = _publish(index, "toy-corpus", "toy_corpus-1.0.tar.gz", data)
    assert index_urls()[0] == os.environ["PIP_INDEX_URL"]
    cache = tmp_path / "cache"
    archive = fetch_archive("pypi", "Toy_Corpus==1.0", "toy_corpus-1.0.tar.gz", sha256, cache)
    assert archive.read_bytes() == data
    lines = capsys.readouterr().err.splitlines()
    # not a terminal: one start and one done line, not a line per chunk
    assert lines == [
        "downloading toy_corpus-1.0.tar.gz: started (3.1 MB)",
        lines[1],
    ]
    assert lines[1].startswith("downloading toy_corpus-1.0.tar.gz: done, 3.1 MB in ")
    assert sorted(p.name for p in cache.iterdir()) == ["toy_corpus-1.0.tar.gz"]
    # a second fetch reuses the verified file: no download, no output
    assert fetch_archive("pypi", "toy-corpus==1.0", "toy_corpus-1.0.tar.gz", sha256, cache) == archive
    assert capsys.readouterr().err == ""


def test_a_digest_mismatch_is_refused_and_leaves_no_partial_file(index, tmp_path):
    pinned = hashlib.sha256(b"the bytes we pinned").hexdigest()
    actual = _publish(index, "toy-corpus", "toy_corpus-1.0.tar.gz", b"other bytes " * 100_000, listed_sha256=pinned)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError) as refused:
        fetch_archive("pypi", "toy-corpus==1.0", "toy_corpus-1.0.tar.gz", pinned, cache)
    message = str(refused.value)
    assert f"sha256 {actual}, not the pinned {pinned}" in message
    assert f"put toy_corpus-1.0.tar.gz (sha256 {pinned}) in {cache} by hand" in message
    assert list(cache.iterdir()) == []  # the partial download is gone
    # a file put there by hand with another digest is deleted too, and named
    (cache / "toy_corpus-1.0.tar.gz").write_bytes(b"tampered")
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        fetch_archive("pypi", "toy-corpus==1.0", "toy_corpus-1.0.tar.gz", pinned, cache)
    assert list(cache.iterdir()) == []


def test_offline_names_the_file_its_digest_and_where_to_put_it(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port with nothing listening: the index is unreachable
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    sha256 = "ab" * 32
    with pytest.raises(RuntimeError) as offline:
        fetch_archive("pypi", "toy-corpus==1.0", "toy_corpus-1.0.tar.gz", sha256, tmp_path)
    assert "could not download toy_corpus-1.0.tar.gz" in str(offline.value)
    assert f"put toy_corpus-1.0.tar.gz (sha256 {sha256}) in {tmp_path} by hand" in str(offline.value)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal_and_waits_out_its_delay():
    terminal = _Terminal()
    progress = Progress("downloading x", 10_000_000, stream=terminal)
    for _ in range(10):
        progress.update(1_000_000)
    progress.close()
    text = terminal.getvalue()
    assert text.count("\n") == 1 and text.endswith("\x1b[K\n")  # one line, redrawn with \r
    assert "(10%)" in text and "downloading x: done, 10.0 MB in " in text
    quiet = io.StringIO()
    progress = Progress("tokenizing", 100, delay_s=60.0, stream=quiet)
    progress.update(100)
    progress.close()
    assert quiet.getvalue() == ""  # it ended before its delay: nothing printed


_HOLD = """
import sys, time
from pathlib import Path
from scaling.train.corpus_fetch import building
with building(Path(sys.argv[1]), "the toy corpus"):
    print("inside", flush=True)
"""


def test_a_second_process_waits_for_the_lock_then_goes_on(tmp_path):
    path = tmp_path / "corpora" / "toy"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with building(path, "the toy corpus"):
        second = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        waiting = second.stderr.readline()  # blocks until the second process has found the lock held
        assert waiting.startswith("waiting for another process that is building the toy corpus")
        assert second.poll() is None  # still waiting while this process holds the lock
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0 and out == "inside\n"


_PREPARE = """
import sys
from scaling.train.corpus import prepare_corpus
print(prepare_corpus(sys.argv[1]).fingerprint, flush=True)
"""


def test_two_processes_preparing_one_corpus_agree_and_leave_one_copy(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    for number in range(30):
        words = " ".join(f"w{(number * 7919 + i) % 5003}" for i in range(1500))
        (texts / f"doc{number}.txt").write_text(f"document {number}: {words}")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MOEPLAN_CACHE": str(tmp_path / "cache")}
    workers = [
        subprocess.Popen([sys.executable, "-c", _PREPARE, str(texts)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    fingerprints = {worker.communicate(timeout=300)[0].strip() for worker in workers}
    assert all(worker.returncode == 0 for worker in workers)
    assert len(fingerprints) == 1 and len(fingerprints.pop()) == 16
    built = [p.name for p in (tmp_path / "cache" / "tokens").iterdir() if p.is_dir()]
    assert len(built) == 1  # no second copy, no staging folder left behind


def test_the_index_is_the_one_pip_is_configured_with(tmp_path, monkeypatch):
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "none"))
    config = tmp_path / "pip.conf"
    config.write_text(
        "[global]\nindex-url = https://mirror.example/simple\nextra-index-url = file:///a/simple\n    file:///b/simple\n"
        "[download]\nindex-url = https://download-mirror.example/simple\n"
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    assert index_urls() == ["https://download-mirror.example/simple", "file:///a/simple", "file:///b/simple"]
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:1/simple")  # the environment wins, as in pip
    assert index_urls()[0] == "http://127.0.0.1:1/simple"
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_INDEX_URL")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    assert index_urls() == ["https://pypi.org/simple"]  # PIP_CONFIG_FILE=/dev/null: no configuration at all

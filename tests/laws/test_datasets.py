"""The published-dataset loader: search order, pinned digests, one-line errors, and the download path
(against a local HTTP server on 127.0.0.1, never the internet)."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import numpy as np
import pytest

from scaling.errors import UserError
from scaling.laws import datasets
from scaling.laws.datasets import DATASETS, DatasetMissing, locate, overtraining_runs


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No MOEPLAN_DATA, an empty cache: only the package's own data folder is left."""
    monkeypatch.delenv("MOEPLAN_DATA", raising=False)
    monkeypatch.delenv("MOEPLAN_DATA_DOWNLOAD", raising=False)
    monkeypatch.setenv("MOEPLAN_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_shipped_dataset_loads_without_anything_beside_the_clone(isolated):
    assert DATASETS["overtraining"].shipped and DATASETS["overtraining"].licence == "MIT"
    assert (datasets.PACKAGE_DATA / "LICENSE-overtraining_openlm_runs.txt").is_file()
    frame = overtraining_runs()
    assert len(frame) > 30 and (frame["C"] > 0).all()  # C = 6 N D in float: int64 overflowed
    assert np.allclose(frame["C"], 6.0 * frame["N"].astype(float) * frame["D"].astype(float))
    assert frame["loss_unit"].iloc[0].startswith("nats/token")


def test_unshipped_datasets_are_not_in_the_package():
    for name in ("chinchilla", "routed_moe", "phone_measurements", "phone_specs"):
        assert not DATASETS[name].shipped, name


def test_missing_file_names_where_to_put_it_and_its_source(isolated):
    with pytest.raises(DatasetMissing) as error:
        locate("chinchilla")
    message = str(error.value)
    assert "MOEPLAN_DATA" in message and "epoch-research/analyzing-chinchilla" in message and "9225883" in message
    assert "\n" not in message


def test_data_dir_is_searched_first_and_digests_are_checked(isolated):
    source = datasets.PACKAGE_DATA / "overtraining_openlm_runs.csv"
    folder = isolated / "mine"
    folder.mkdir()
    shutil.copy(source, folder / source.name)
    assert locate("overtraining", data_dir=folder) == folder / source.name
    (folder / source.name).write_text("params,tokens\n1,2\n")
    with pytest.raises(UserError, match="not the pinned"):
        locate("overtraining", data_dir=folder)
    with pytest.raises(UserError, match="unknown dataset"):
        locate("no-such-thing")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server over a folder, standing in for a dataset's public source."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_the_pin_and_caches(isolated, mirror, monkeypatch):
    folder, url = mirror
    source = datasets.PACKAGE_DATA / "overtraining_openlm_runs.csv"
    monkeypatch.setattr(datasets, "PACKAGE_DATA", isolated / "no-package-data")  # as if it were not shipped
    monkeypatch.setenv("MOEPLAN_DATA_DOWNLOAD", url)
    with pytest.raises(DatasetMissing, match="cannot download"):  # not on the mirror yet: 404
        locate("overtraining")
    (folder / source.name).write_text("tampered\n")
    with pytest.raises(UserError, match="not the pinned"):
        locate("overtraining")
    assert not (isolated / "cache" / "datasets" / source.name).exists()  # a bad download is not kept
    shutil.copy(source, folder / source.name)
    path = locate("overtraining")
    assert path == isolated / "cache" / "datasets" / source.name
    monkeypatch.delenv("MOEPLAN_DATA_DOWNLOAD")
    assert locate("overtraining") == path  # now found in the cache, with no download

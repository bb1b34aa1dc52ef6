"""medsynth.cache: one root for every local cache, one folder per kind, two legacy overrides."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from medsynth import cache
from medsynth.cache import cache_root


@pytest.fixture(autouse=True)
def _no_cache_env(monkeypatch):
    for var in (cache.ROOT_ENV, cache.WORKDIR_ENV, cache.WEIGHTS_ENV):
        monkeypatch.delenv(var, raising=False)


def test_every_kind_has_its_folder_under_one_root(monkeypatch, tmp_path):
    default = Path(tempfile.gettempdir()) / "medsynth"
    assert {k: cache_root(k) for k in cache.KINDS} == {k: default / k for k in cache.KINDS}
    monkeypatch.setenv(cache.ROOT_ENV, str(tmp_path))
    assert {k: cache_root(k) for k in cache.KINDS} == {k: tmp_path / k for k in cache.KINDS}


def test_the_old_variables_still_name_their_kinds_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.ROOT_ENV, str(tmp_path / "root"))
    monkeypatch.setenv(cache.WORKDIR_ENV, str(tmp_path / "node-disk"))
    monkeypatch.setenv(cache.WEIGHTS_ENV, str(tmp_path / "weights"))
    assert cache_root("work") == tmp_path / "node-disk"
    assert cache_root("weights") == tmp_path / "weights"
    assert cache_root("runs") == tmp_path / "root" / "runs"


def test_an_unknown_kind_is_named():
    with pytest.raises(ValueError, match="'wieghts'"):
        cache_root("wieghts")

"""Shared fixtures: a private feature cache and a tiny generated data set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every test run gets its own feature cache (never the user's)."""
    path = tmp_path_factory.mktemp("feature-cache")
    old = os.environ.get("CROSSALIGN_CACHE_DIR")
    os.environ["CROSSALIGN_CACHE_DIR"] = str(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield path
    if old is None:
        os.environ.pop("CROSSALIGN_CACHE_DIR", None)
    else:
        os.environ["CROSSALIGN_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """60 generated images with 5 captions each (read-only for tests: copy before changing)."""
    from crossalign.data.synthetic import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_images=60, seed=1, size=64)

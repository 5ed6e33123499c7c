"""Fixtures for the media extractors: generated clips, written once per session.

Every test module here needs the ``media`` extra; without it they are skipped (the
missing-extra error itself is tested in test_deps.py, which needs nothing).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from qamoe_core.data.media.clip import Extractors
from qamoe_core.data.media.config import MediaConfig
from tests.data.media import mediagen


@pytest.fixture(scope="session")
def clips_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 clips (speech or tone, MJPG videos with faces in alternate frames; clip 0 and 3
    carry their audio in an .mp4 sound track) and manifest.csv. Read-only for tests."""
    pytest.importorskip("cv2")
    pytest.importorskip("av")
    folder = tmp_path_factory.mktemp("media")
    mediagen.make_manifest(folder, 6, seconds=1.2, fps=10, audio_from_video_every=3)
    return folder


_ORIGINAL_LOAD = Extractors.load


@functools.lru_cache(maxsize=4)
def _cached_load(config: MediaConfig, modalities: tuple[str, ...]) -> Extractors:
    return _ORIGINAL_LOAD(config, modalities)


@pytest.fixture
def cached_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load each extractor set once per session instead of once per run (saves ~5 s a run)."""
    monkeypatch.setattr(Extractors, "load", _cached_load)

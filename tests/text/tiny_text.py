"""A tiny BERT and a tiny feature file with token ids, built in the test (no download); and
the same BERT turned hostile (an auto_map whose .py files write a marker).

The tiny vocabulary puts [UNK]/[CLS]/[SEP] at 1/2/3, not BERT's 100/101/102, so a test
passes only if the tokenizer's own ids are used.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from qamoe_core.data.store import SplitArrays, write_features

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "very", "not"]
N_LAYERS = 3
HIDDEN = 32
UNK, CLS, SEP = 1, 2, 3


def save_tiny_bert(path: Path, vocab: list[str] = VOCAB, seed: int = 0) -> Path:
    """A 3-layer BERT of width 32 and its tokenizer, saved as save_pretrained() does."""
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    transformers.BertModel(config).save_pretrained(path)
    transformers.BertTokenizer(vocab_file=str(vocab_file)).save_pretrained(path)
    return path


def _split(rng: np.random.Generator, n: int, prefix: str, text_dim: int) -> SplitArrays:
    """Utterances "[CLS] w.. [SEP]" whose label follows the count of good minus bad."""
    t = 8
    ids = np.zeros((n, t), np.int64)
    lengths = rng.integers(3, t + 1, n)
    label = np.zeros(n, np.float32)
    for i, length in enumerate(lengths):
        words = rng.integers(5, len(VOCAB), length - 2)
        ids[i, 0], ids[i, 1 : length - 1], ids[i, length - 1] = CLS, words, SEP
        label[i] = np.clip((words == 5).sum() - (words == 6).sum(), -3, 3)
    text = rng.normal(size=(n, t, text_dim)).astype(np.float32)
    text *= (np.arange(t)[None, :] < lengths[:, None])[..., None]
    audio = rng.normal(size=(n, 1, 4)).astype(np.float32)
    return SplitArrays(
        ids=[f"{prefix}{i}" for i in range(n)],
        label=label,
        features={"text": text, "audio": audio},
        lengths={"text": lengths.astype(np.int64), "audio": np.ones(n, np.int64)},
        text_ids=ids,
    )


def write_tiny_ids_file(path: Path, *, with_ids: bool = True, text_dim: int = HIDDEN) -> Path:
    """train/valid/test of 48/16/16 utterances, scheme mosi, text (with ids) + audio."""
    rng = np.random.default_rng(0)
    splits = {s: _split(rng, n, s, text_dim) for s, n in (("train", 48), ("valid", 16),
                                                          ("test", 16))}  # fmt: skip
    if not with_ids:
        splits = {k: SplitArrays(v.ids, v.label, v.features, v.lengths) for k, v in splits.items()}
    attrs = {"text_special_ids": json.dumps([UNK, CLS, SEP])} if with_ids else None
    return write_features(path, splits, dataset="tiny-ids", task="regression", scheme="mosi",
                          label_range=(-3.0, 3.0), extractor={"name": "test"},
                          attrs=attrs)  # fmt: skip


def remote_code_folder(tiny_dir: Path, root: Path, marker: Path) -> Path:
    """The tiny BERT with an auto_map naming .py files that write ``marker`` on import."""
    folder = root / "remote-code"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    auto_map = {"AutoConfig": "configuration_evil.EvilConfig",
                "AutoModel": "modeling_evil.EvilModel"}  # fmt: skip
    config.update(model_type="evil-bert", auto_map=auto_map)
    (folder / "config.json").write_text(json.dumps(config))
    payload = f"open({str(marker)!r}, 'w').close()\n"
    (folder / "configuration_evil.py").write_text(
        payload + "from transformers import BertConfig\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil-bert'\n"
    )
    (folder / "modeling_evil.py").write_text(
        payload + "from transformers import BertModel as EvilModel\n"
    )
    return folder

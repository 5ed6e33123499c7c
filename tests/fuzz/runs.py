"""Hypothesis strategies for run folders and results tables made from one tiny trained run.

A run folder is a copy of the session's trained run with one to three mutations (tuples, so a
failing example prints as what was done):

- ``("config", dotted_key, value)``: one config.json field set (``model_name``/``model_class``
  to ``module:Class`` paths, canaries and a payload shipped in the folder; wrong types, huge
  numbers, deep JSON) or deleted;
- ``("config_file", kind)``: config.json replaced whole (empty, cut, not UTF-8, deep, bare
  NaN, a list, a FIFO, a link to /dev/zero);
- ``("weights", kind)``: model.safetensors cut, emptied, garbage, a huge header length, a
  tensor of the wrong shape, dtype or with NaN, a key missing or extra, a FIFO;
- ``("legacy", kind)``: model.safetensors replaced by a model.pt: a valid state dict, a pickle
  or torch file whose unpickling would run code (it drops a marker file), a non-tensor value;
- ``("aside", name, kind)``: metrics.json, history.jsonl or train_state.pt damaged.

A results table is the session's sweep CSV with one to three mutations: ``("cell", column,
row, value)``, ``("column", column, "drop"|"duplicate")``, ``("rows", kind)``, ``("bytes",
kind)``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from tests.fuzz.files import DEEP_JSON

CANARY = "qamoe_fuzz_canary"
PAYLOAD = "{run}.payload:Model"  # a module shipped inside the run folder itself

_names = st.sampled_from([
    f"{CANARY}:Model", f"{CANARY}.sub:Model", "this:Zen", PAYLOAD, "os:system",
    "builtins:eval", "qamoe_core.models.qamoe:QAMoE", "qamoe_core.models.qamoe:Nope",
    "qamoe", "lstm", "tfn", ":", "a:b:c", "..x:y", "/tmp/x.py:Model", "", " qamoe", "QAMOE",
])  # fmt: skip
_values = st.one_of(
    _names,
    st.sampled_from([None, True, 0, -1, 1, 3, 256, 4096, 65_536, 100_000, 2**31, 10**30, 1e308,
                     -1e-300, 0.5]),
    st.text(max_size=12),
    st.sampled_from([[], [1, 2], {}, {"text": 32}, {"text": 0}, {"fog": 3}, {"text": 10**9},
                     {"text": "32"}, "deep"]),
)  # fmt: skip
_keys = st.sampled_from([
    "model_name", "model_class", "format", "format_version", "dims", "dims.text", "task",
    "scheme", "dataset", "dataset.seq_lens", "dataset.label_range", "created_by", "model",
    "model.d_model", "model.num_experts", "model.top_k", "model.n_heads", "model.segments",
    "model.expert_mult", "model.n_layers", "model.options", "model.text_encoder",
    "model.text_model", "model.text_model_hash", "train", "train.batch_size", "train.epochs",
    "train.seed",
])  # fmt: skip

run_mutation = st.one_of(
    st.tuples(st.just("config"), _keys, st.one_of(_values, st.just(("delete",)))),
    st.tuples(st.just("config_file"),
              st.sampled_from(["empty", "cut", "not_utf8", "deep", "nan", "list", "fifo",
                               "dev_zero", "dir"])),
    st.tuples(st.just("weights"),
              st.sampled_from(["cut", "empty", "garbage", "huge_header", "wrong_shape",
                               "float16", "int", "nan", "missing_key", "extra_key", "fifo",
                               "dev_zero", "scalar"])),
    st.tuples(st.just("legacy"),
              st.sampled_from(["state_dict", "pickle_payload", "torch_payload", "not_tensors",
                               "cut_zip", "both"])),
    st.tuples(st.just("aside"), st.sampled_from(["metrics.json", "history.jsonl",
                                                 "train_state.pt"]),
              st.sampled_from(["nan", "garbage", "deep", "empty", "delete", "list"])),
)  # fmt: skip
run_folders = st.lists(run_mutation, min_size=1, max_size=3)


class _Payload:
    """Unpickling this creates the marker file: a canary for code run from a weights file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def make_run(mutations: list[tuple[Any, ...]], base: Path, run: Path, markers: Path) -> Path:
    """Copy the trained run ``base`` to ``run`` and apply ``mutations``."""
    shutil.copytree(base, run)
    (run / "payload.py").write_text(
        f"open({str(markers / 'payload-ran')!r}, 'w').close()\n"
        "from qamoe_core.models.qamoe import QAMoE as Model\n"
    )
    for m in mutations:
        {"config": _config, "config_file": _config_file, "weights": _weights,
         "legacy": _legacy, "aside": _aside}[m[0]](run, *m[1:], markers=markers)  # fmt: skip
    return run


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _replace_with_special(path: Path, kind: str) -> bool:
    """A FIFO, a link to /dev/zero or a folder in place of ``path``; False for other kinds."""
    if kind not in ("fifo", "dev_zero", "dir"):
        return False
    _remove(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    return True


def _config(run: Path, key: str, value: Any, markers: Path) -> None:
    path = run / "config.json"
    if not path.is_file():  # a FIFO would block the generator itself
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return  # an earlier mutation replaced the file
    if value == PAYLOAD:
        value = PAYLOAD.format(run=run.name)
    *parents, last = key.split(".")
    node = data
    for p in parents:
        if not isinstance(node, dict) or not isinstance(node.get(p), dict):
            return
        node = node[p]
    if not isinstance(node, dict):
        return
    if value == ("delete",):
        node.pop(last, None)
    else:
        node[last] = "@DEEP@" if value == "deep" else value
    text = json.dumps(data, indent=1).replace('"@DEEP@"', DEEP_JSON.replace("][", "], ["))
    path.write_text(text)


def _config_file(run: Path, kind: str, markers: Path) -> None:
    path = run / "config.json"
    if _replace_with_special(path, kind):
        return
    old = path.read_bytes() if path.is_file() else b"{}"
    if not path.is_file():  # writing into a FIFO an earlier mutation left would block here
        _remove(path)
    data = {"empty": b"", "cut": old[: len(old) // 2], "not_utf8": b'{"format": "\xff\xfe"}',
            "deep": DEEP_JSON.encode(), "nan": old.replace(b"{", b'{"fuzz": NaN, ', 1),
            "list": b"[1, 2, 3]"}[kind]  # fmt: skip
    path.write_bytes(data)


def _weights(run: Path, kind: str, markers: Path) -> None:
    path = run / "model.safetensors"
    if _replace_with_special(path, kind) or not path.is_file():
        return
    raw = path.read_bytes()
    if kind in ("cut", "empty", "garbage", "huge_header"):
        path.write_bytes({"cut": raw[: len(raw) // 3], "empty": b"",
                          "garbage": bytes(range(256)) * 8,
                          "huge_header": struct.pack("<Q", 2**60) + raw[8:]}[kind])  # fmt: skip
        return
    try:
        tensors = load_file(path)
    except Exception:
        return
    first = sorted(tensors)[0]
    if kind == "wrong_shape":
        tensors[first] = torch.zeros(3, 7)
    elif kind == "float16":
        tensors = {k: v.half() for k, v in tensors.items()}
    elif kind == "int":
        tensors[first] = tensors[first].to(torch.int64)
    elif kind == "nan":
        tensors[first] = torch.full_like(tensors[first], float("nan"))
    elif kind == "missing_key":
        tensors.pop(first)
    elif kind == "extra_key":
        tensors["fuzz.extra.weight"] = torch.ones(2)
    elif kind == "scalar":
        tensors[first] = torch.tensor(1.0)
    save_file(tensors, path)


def _legacy(run: Path, kind: str, markers: Path) -> None:
    new, old = run / "model.safetensors", run / "model.pt"
    try:
        state: dict[str, Any] = load_file(new) if new.is_file() else {}
    except Exception:
        state = {}
    if kind != "both" and os.path.lexists(new) and not new.is_dir():
        new.unlink()
    marker = str(markers / f"{kind}-ran")
    if kind in ("state_dict", "both"):
        torch.save(state, old)
    elif kind == "pickle_payload":
        old.write_bytes(pickle.dumps({"w": _Payload(marker)}))
    elif kind == "torch_payload":
        torch.save({**state, "w": _Payload(marker)}, old)
    elif kind == "not_tensors":
        torch.save({k: "weights" for k in state} or {"a": 1}, old)
    else:  # a torch zip cut short
        buf = io.BytesIO()
        torch.save(state, buf)
        old.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert zipfile.is_zipfile(old) or kind in ("pickle_payload", "cut_zip")


def _aside(run: Path, name: str, kind: str, markers: Path) -> None:
    path = run / name
    if kind == "delete":
        if path.exists():
            path.unlink()
        return
    data = {"nan": b'{"valid": {"Has0_acc_2": NaN}}', "garbage": b"\x00\xffgarbage",
            "deep": DEEP_JSON.encode(), "empty": b"", "list": b"[[1]]\n"}[kind]  # fmt: skip
    path.write_bytes(data)


# -- results tables ------------------------------------------------------------------------
_cells = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e308, 2.5, 10**20,
                     "", "x", "nan", "\x1b]8;;javascript:alert(1)\x07link", "line\nbreak",
                     "[img](http://example.invalid/a.png)", "<script>", "0.5.1"]),
    st.text(max_size=8),
)  # fmt: skip
_columns = st.sampled_from([
    "run", "model", "axis", "level", "metric", "value", "seed", "variant", "n_samples",
    "dataset", "missing_rate", "noise_std", "split", "modalities", "__other__",
])  # fmt: skip

table_mutation = st.one_of(
    st.tuples(st.just("cell"), _columns, st.integers(0, 400), _cells),
    st.tuples(st.just("column"), _columns, st.sampled_from(["drop", "duplicate", "constant"])),
    st.tuples(st.just("rows"), st.sampled_from(["none", "one", "shuffle", "double",
                                                "only_constant", "only_clean", "no_clean"])),
    st.tuples(st.just("bytes"), st.sampled_from(["cut", "not_utf8", "empty", "header_only",
                                                 "bom", "crlf"])),
)  # fmt: skip
results_tables = st.lists(table_mutation, min_size=1, max_size=3)


def make_table(mutations: list[tuple[Any, ...]], base: Path, path: Path) -> Path:
    """Write the sweep table ``base`` with ``mutations`` applied at ``path``."""
    table = pd.read_csv(base, keep_default_na=False)
    raw_edits = []
    for m in mutations:
        if m[0] == "bytes":
            raw_edits.append(m[1])
        else:
            table = _edit_table(table, m)
    table.to_csv(path, index=False)
    for kind in raw_edits:
        data = path.read_bytes()
        path.write_bytes({"cut": data[: len(data) // 2], "not_utf8": data.replace(b"qamoe",
                          b"q\xffamoe"), "empty": b"", "header_only": data.split(b"\n")[0],
                          "bom": b"\xef\xbb\xbf" + data, "crlf": data.replace(b"\n", b"\r\n")
                          }[kind])  # fmt: skip
    return path


def _edit_table(table: pd.DataFrame, m: tuple[Any, ...]) -> pd.DataFrame:
    kind = m[0]
    if kind == "cell":
        column, row, value = m[1:]
        if column in table.columns and len(table):
            table = table.astype({column: object})
            table.iloc[row % len(table), table.columns.get_loc(column)] = value
    elif kind == "column":
        column, what = m[1:]
        if column == "__other__":
            table["__other__"] = 1
        elif column in table.columns and what == "drop":
            table = table.drop(columns=[column])
        elif column in table.columns and what == "constant":
            table[column] = table[column].iloc[0] if len(table) else 0
        elif column in table.columns:
            table = pd.concat([table, table[[column]]], axis=1)
    else:
        variant = table["variant"] if "variant" in table else pd.Series([""] * len(table))
        axis = table["axis"] if "axis" in table else pd.Series([""] * len(table))
        table = {"none": table.iloc[:0], "one": table.iloc[:1],
                 "shuffle": table.sample(frac=1.0, random_state=0),
                 "double": pd.concat([table, table]),
                 "only_constant": table[variant.to_numpy() == "constant"],
                 "only_clean": table[axis.to_numpy() == "clean"],
                 "no_clean": table[axis.to_numpy() != "clean"]}[m[1]]  # fmt: skip
    return table

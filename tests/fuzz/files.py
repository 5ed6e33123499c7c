"""Hypothesis strategies for feature files (data/README.md's schema, and everything beside it).

A generated file is the tiny preset (tests' ``tiny_h5``) with one to three mutations, or a
file written from scratch with drawn shapes and dtypes. Each mutation is a plain tuple, so a
failing example prints as what was done to the file:

- ``("retype", split, key, dtype)``: the dataset rewritten in another dtype (floats of each
  width, ints, bool, fixed and variable strings, complex);
- ``("reshape", split, key, kind)``: 0 rows, 0 steps, 0 dims, a lost or extra axis, a scalar,
  one row fewer or more;
- ``("huge", split, key, kind)``: a chunked dataset declaring a huge shape with no chunk
  written, or a large fully written (compressible) one;
- ``("lengths", split, modality, value)``: one row's valid length set to a value out of
  [0, T], or the whole lengths dataset as floats or byte strings;
- ``("mask", split, modality, dtype, value, kind)``: a ``<m>_keep`` mask of that dtype;
- ``("attr", name, value)``: a root attribute deleted or set to another type (arrays,
  non-UTF-8 bytes, deep or huge JSON, duplicated modality lists);
- ``("tree", kind, size)``: a deep chain of groups or a wide group;
- ``("link", kind, split, key)``: soft links (to elsewhere, dangling, cyclic, to themselves),
  external links, hard links making two names one object;
- ``("values", split, key, kind)``: NaN, inf, huge values, a label out of range, one label
  value everywhere;
- ``("delete", split, key)``: a dataset or split removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from hypothesis import note
from hypothesis import strategies as st

SPLITS = ("train", "valid", "test")
MODALITIES = ("text", "audio", "vision")
KEYS = ("ids", "label", "text", "audio", "vision", "text_len", "audio_len", "vision_len",
        "raw_text", "text_ids", "text_keep")  # fmt: skip
DTYPES = ("float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool", "S6",
          "str", "complex64")  # fmt: skip
ROOT_ATTRS = ("format", "format_version", "dataset", "task", "scheme", "label_min",
              "label_max", "created_by", "extractor", "modalities", "train_mean_text",
              "train_std_audio", "train_std_vision", "corruption", "text_special_ids",
              "notes")  # fmt: skip
DEEP_JSON = "[" * 5000 + "]" * 5000

_attr_values = st.one_of(
    st.just(("delete",)),
    st.sampled_from([0, -1, 1, 2**62, 1.5, float("nan"), float("inf"), -1e308, True]),
    st.text(max_size=20),
    st.sampled_from([
        b"\xff\xfe\x00bad", "x" * 60_000, DEEP_JSON, "[]", '["text", "text"]',
        '["audio", "fog"]', '["vision"]', '{"modalities": 1}', "[1, 2, 3]", '[100, 101]',
        '[{"level": "abc"}]', '[{"level": 0.5, "axis": "mixed"}]', "null", "NaN", "regression",
        "binary", "sims", "qamoe-features",
    ]),
    st.sampled_from(["int_array", "str_array", "float_array", "empty_array", "matrix"]),
)  # fmt: skip

mutation = st.one_of(
    st.tuples(st.just("retype"), st.sampled_from(SPLITS), st.sampled_from(KEYS),
              st.sampled_from(DTYPES)),
    st.tuples(st.just("reshape"), st.sampled_from(SPLITS), st.sampled_from(KEYS),
              st.sampled_from(["rows0", "steps0", "dims0", "drop_axis", "add_axis", "scalar",
                               "fewer", "more"])),
    st.tuples(st.just("huge"), st.sampled_from(SPLITS),
              st.sampled_from(["text", "audio", "label", "audio_len", "ids"]),
              st.sampled_from(["long_empty", "wide_empty", "rows_empty", "dense_64M",
                               "dense_600M", "contiguous_empty"])),
    st.tuples(st.just("lengths"), st.sampled_from(SPLITS), st.sampled_from(MODALITIES),
              st.sampled_from([-5, -1, 0, "T", "T+1", 10**6, 2**40, "float", "bytes", "nan"])),
    st.tuples(st.just("mask"), st.sampled_from(SPLITS), st.sampled_from(MODALITIES),
              st.sampled_from(["bool", "uint8", "int32", "float32", "S1"]),
              st.sampled_from([0, 1, 2, -1, 0.5]),
              st.sampled_from(["ok", "wrong_shape", "one_dim"])),
    st.tuples(st.just("attr"), st.sampled_from(ROOT_ATTRS), _attr_values),
    st.tuples(st.just("tree"), st.sampled_from(["deep", "wide", "deep_in_split"]),
              st.sampled_from([1, 5, 31, 32, 33, 60, 200, 9_990, 10_001])),
    st.tuples(st.just("link"),
              st.sampled_from(["soft_other", "dangling", "cycle", "self", "external",
                               "external_missing", "hard_split", "soft_split", "hard_key"]),
              st.sampled_from(SPLITS), st.sampled_from(KEYS)),
    st.tuples(st.just("values"), st.sampled_from(SPLITS),
              st.sampled_from(["label", "text", "audio", "vision", "text_ids"]),
              st.sampled_from(["nan", "inf", "-inf", "1e30", "out_of_range", "constant",
                               "zeros", "negative"])),
    st.tuples(st.just("delete"), st.sampled_from([*SPLITS, "train", "valid"]),
              st.sampled_from([*KEYS, "(split)"])),
)  # fmt: skip

scratch = st.fixed_dictionaries({
    "modalities": st.lists(st.sampled_from(MODALITIES), min_size=0, max_size=4),
    "rows": st.tuples(*(st.integers(0, 6) for _ in SPLITS)),
    "steps": st.integers(0, 5),
    "dims": st.integers(0, 4),
    "feature_dtype": st.sampled_from(["float16", "float32", "float64", "int16", "bool"]),
    "label_dtype": st.sampled_from(["float32", "float64", "int8", "bool", "S4"]),
    "len_dtype": st.sampled_from(["int32", "int64", "uint8", "float32"]),
    "task": st.sampled_from(["regression", "binary", "ranking"]),
    "labels": st.sampled_from(["spread", "constant", "binary"]),
})  # fmt: skip

# A generated file: ("tiny", [mutations]) or ("scratch", parameters, [mutations]).
feature_files = st.one_of(
    st.tuples(st.just("tiny"), st.lists(mutation, min_size=1, max_size=3)),
    st.tuples(st.just("scratch"), scratch, st.lists(mutation, max_size=1)),
)


def make_file(spec: tuple[Any, ...], tiny: Path, path: Path) -> Path:
    """Write the file ``spec`` describes at ``path``."""
    if spec[0] == "tiny":
        shutil.copy(tiny, path)
        mutations = spec[1]
    else:
        write_scratch(spec[1], path)
        mutations = spec[2]
    with h5py.File(path, "a") as h5:
        for m in mutations:
            try:
                apply(h5, m, path)
            except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
                note(f"mutation {m} not applied: h5py refused it ({exc})")
    return path


def write_scratch(p: dict[str, Any], path: Path) -> None:
    """A file written from scratch by the schema, with drawn sizes and dtypes."""
    rng = np.random.default_rng(0)
    mods = p["modalities"]
    t, d = p["steps"], p["dims"]
    with h5py.File(path, "w") as h5:
        h5.attrs.update(format="qamoe-features", format_version=1, dataset="scratch",
                        task=p["task"], scheme="binary" if p["task"] == "binary" else "mosi",
                        label_min=0.0 if p["task"] == "binary" else -3.0, label_max=3.0,
                        created_by="fuzz", extractor="{}", modalities=_json(mods))  # fmt: skip
        for m in dict.fromkeys(mods):  # an empty array (d = 0) is stored as h5py.Empty
            h5.attrs[f"train_mean_{m}"] = np.zeros(d, np.float32) if d else h5py.Empty("f4")
            h5.attrs[f"train_std_{m}"] = np.ones(d, np.float32) if d else h5py.Empty("f4")
        for split, n in zip(SPLITS, p["rows"], strict=True):
            g = h5.create_group(split)
            g["ids"] = np.array([f"{split}_{i}" for i in range(n)], dtype=h5py.string_dtype())
            g["label"] = _labels(p, n, rng)
            for m in dict.fromkeys(mods):
                g[m] = rng.normal(size=(n, t, d)).astype(p["feature_dtype"])
                g[f"{m}_len"] = np.full(n, t).astype(p["len_dtype"])


def _labels(p: dict[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
    if p["labels"] == "constant":
        values = np.ones(n)
    elif p["labels"] == "binary" or p["task"] == "binary":
        values = np.arange(n) % 2
    else:
        values = rng.uniform(-3, 3, size=n)
    return values.astype(p["label_dtype"])


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def apply(h5: h5py.File, m: tuple[Any, ...], path: Path) -> None:
    """Apply one mutation (module docstring) to the open file ``h5``."""
    handler = _HANDLERS[m[0]]
    if m[0] == "link":
        handler(h5, *m[1:], path=path)
    else:
        handler(h5, *m[1:])


def _group(h5: h5py.File, split: str) -> h5py.Group | None:
    obj = h5.get(split)
    return obj if isinstance(obj, h5py.Group) else None


def _data(g: h5py.Group, key: str) -> np.ndarray | None:
    obj = g.get(key)
    if not isinstance(obj, h5py.Dataset):
        return None
    try:
        return obj[()]
    except Exception:  # a mutation applied before may have made it unreadable
        return None


def _rewrite(g: h5py.Group, key: str, data: np.ndarray, **kwargs: Any) -> None:
    if key in g or g.get(key, getlink=True) is not None:
        del g[key]
    if data.dtype == object or data.dtype.kind == "U":
        data = np.array(data.astype(str), dtype=h5py.string_dtype())
        kwargs.pop("dtype", None)
        g.create_dataset(key, data=data, dtype=h5py.string_dtype(), **kwargs)
        return
    g.create_dataset(key, data=data, **kwargs)


def _cast(data: np.ndarray, dtype: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        if dtype == "str":
            if data.dtype.kind == "S":
                return np.array([x.decode("utf-8", "replace") for x in data.ravel()],
                                dtype=object).reshape(data.shape)  # fmt: skip
            return data.astype(str).astype(object)
        try:
            return data.astype(dtype)
        except (ValueError, TypeError):
            return np.zeros(data.shape, dtype=dtype)


def _retype(h5: h5py.File, split: str, key: str, dtype: str) -> None:
    g = _group(h5, split)
    data = None if g is None else _data(g, key)
    if g is not None and data is not None:
        _rewrite(g, key, _cast(np.asarray(data), dtype))


def _reshaped(data: np.ndarray, kind: str) -> np.ndarray:
    shape = data.shape
    if kind == "scalar":
        return np.asarray(data.ravel()[0] if data.size else 0, dtype=data.dtype)
    if kind == "drop_axis":
        return data[..., 0] if data.ndim > 1 else data[:0]
    if kind == "add_axis":
        return data[..., None]
    if kind == "fewer":
        return data[:-1]
    if kind == "more":
        return np.concatenate([data, data[:1]]) if len(data) else data
    axis = {"rows0": 0, "steps0": 1, "dims0": 2}[kind]
    if axis >= data.ndim:
        return data[:0]
    new = list(shape)
    new[axis] = 0
    return np.zeros(tuple(new), dtype=data.dtype)


def _reshape(h5: h5py.File, split: str, key: str, kind: str) -> None:
    g = _group(h5, split)
    data = None if g is None else _data(g, key)
    if g is not None and data is not None and np.ndim(data) > 0:
        _rewrite(g, key, _reshaped(np.asarray(data), kind))


def _huge(h5: h5py.File, split: str, key: str, kind: str) -> None:
    g = _group(h5, split)
    if g is None:
        return
    old = g.get(key)
    n = old.shape[0] if isinstance(old, h5py.Dataset) and old.ndim else 32
    d = old.shape[-1] if isinstance(old, h5py.Dataset) and old.ndim == 3 else 5
    if key in g:
        del g[key]
    vector = key in ("label", "audio_len", "ids")
    dtype = h5py.string_dtype() if key == "ids" else ("int32" if key.endswith("_len") else "f4")
    if kind == "dense_64M" or kind == "dense_600M":
        rows = (64 if kind == "dense_64M" else 600) << 20
        shape = (rows // 4,) if vector else (n, rows // (4 * n * d), d)
        ds = g.create_dataset(key, shape=shape, dtype="f4", chunks=True, compression="lzf")
        block = np.zeros(shape[1:], dtype="f4") if not vector else np.zeros(1 << 20, "f4")
        step = 1 if not vector else 1 << 20
        for start in range(0, shape[0], step):
            ds[start : start + step] = block[: min(step, shape[0] - start)] if vector else block
        return
    shapes = {"long_empty": (n, 6_000_000, d), "wide_empty": (n, 1, 100_000_000),
              "rows_empty": (10**9, 4, d)}  # fmt: skip
    shape = (10**9,) if vector else shapes.get(kind, (n, 10**7, d))
    if kind == "contiguous_empty":
        g.create_dataset(key, shape=shape, dtype=dtype)
    else:
        g.create_dataset(key, shape=shape, dtype=dtype, chunks=True, compression="gzip")


def _lengths(h5: h5py.File, split: str, modality: str, value: Any) -> None:
    g = _group(h5, split)
    key = f"{modality}_len"
    data = None if g is None else _data(g, key)
    feats = None if g is None else g.get(modality)
    if g is None or data is None or np.ndim(data) != 1 or not len(data):
        return
    t = feats.shape[1] if isinstance(feats, h5py.Dataset) and feats.ndim > 1 else 1
    if value in ("float", "nan"):
        new = data.astype("float32")
        new[0] = np.nan if value == "nan" else 2.5
    elif value == "bytes":
        new = np.array([str(int(x)).encode() for x in data], dtype="S8")
    else:
        new = data.astype("int64")
        new[0] = {"T": t, "T+1": t + 1}.get(value, value)
    _rewrite(g, key, new)


def _mask(h5: h5py.File, split: str, modality: str, dtype: str, value: Any, kind: str) -> None:
    g = _group(h5, split)
    feats = None if g is None else g.get(modality)
    if g is None or not isinstance(feats, h5py.Dataset) or feats.ndim < 2:
        return
    shape = {"ok": feats.shape[:2], "wrong_shape": (feats.shape[0], feats.shape[1] + 1),
             "one_dim": feats.shape[:1]}[kind]  # fmt: skip
    data = np.ones(shape)
    data.ravel()[::3] = value
    with np.errstate(all="ignore"):
        _rewrite(g, f"{modality}_keep", data.astype(dtype))


def _attr_value(value: Any) -> Any:
    arrays = {"int_array": np.arange(3), "str_array": np.array([b"text", b"audio"]),
              "float_array": np.array([0.5, np.nan]), "empty_array": np.zeros(0),
              "matrix": np.ones((2, 2))}  # fmt: skip
    if isinstance(value, str) and value in arrays:
        return arrays[value]
    if isinstance(value, bytes):
        return np.void(value) if value.startswith(b"\x00") else value
    return value


def _attr(h5: h5py.File, name: str, value: Any) -> None:
    if value == ("delete",):
        if name in h5.attrs:
            del h5.attrs[name]
        return
    h5.attrs[name] = _attr_value(value)


def _tree(h5: h5py.File, kind: str, size: int) -> None:
    size = min(size, 10_001)
    root = h5["train"] if kind == "deep_in_split" and "train" in h5 else h5
    name = "junk"
    while name in root:
        name += "_"
    g = root.create_group(name)
    if kind == "wide":
        for i in range(size):
            g.create_group(str(i))
        return
    for _ in range(size):
        g = g.create_group("g")


def _link(h5: h5py.File, kind: str, split: str, key: str, path: Path) -> None:
    g = _group(h5, split)
    if g is None:
        return
    if key in g or g.get(key, getlink=True) is not None:
        del g[key]
    other = "valid" if split != "valid" else "test"
    targets = {
        "soft_other": h5py.SoftLink(f"/{other}/{key}"),
        "dangling": h5py.SoftLink("/nowhere/at/all"),
        "cycle": h5py.SoftLink(f"/{split}/{key}_loop"),
        "self": h5py.SoftLink(f"/{split}/{key}"),
        "external": h5py.ExternalLink(path.name, f"/{other}/{key}"),
        "external_missing": h5py.ExternalLink("/nonexistent/qamoe-fuzz.h5", "/x"),
    }
    if kind == "cycle":
        g[f"{key}_loop"] = h5py.SoftLink(f"/{split}/{key}")
    if kind in targets:
        g[key] = targets[kind]
    elif kind == "hard_key" and f"/{other}/{key}" in h5:
        g[key] = h5[f"/{other}/{key}"]
    elif kind in ("hard_split", "soft_split"):
        del h5[split]
        h5[split] = h5[other] if kind == "hard_split" else h5py.SoftLink(f"/{other}")


def _values(h5: h5py.File, split: str, key: str, kind: str) -> None:
    g = _group(h5, split)
    data = None if g is None else _data(g, key)
    if g is None or data is None or data.dtype.kind not in "fiub" or not data.size:
        return
    dtype = data.dtype
    data = data if kind == "zeros" else data.astype("float32")
    flat = data.reshape(-1)
    with np.errstate(all="ignore"):
        if kind in ("nan", "inf", "-inf", "1e30"):
            flat[len(flat) // 2] = float(kind)
        elif kind == "out_of_range":
            flat[0] = 100.0
        elif kind == "constant":
            flat[:] = flat[0]
        elif kind == "zeros":
            flat[:] = 0
        else:
            flat[:] = -np.abs(flat)
    _rewrite(g, key, data.astype(dtype) if kind == "zeros" else data)


def _delete(h5: h5py.File, split: str, key: str) -> None:
    if key == "(split)":
        if split in h5:
            del h5[split]
        return
    g = _group(h5, split)
    if g is not None and key in g:
        del g[key]


_HANDLERS = {"retype": _retype, "reshape": _reshape, "huge": _huge, "lengths": _lengths,
             "mask": _mask, "attr": _attr, "tree": _tree, "link": _link, "values": _values,
             "delete": _delete}  # fmt: skip

"""The restricted unpickler: arrays, containers and tensors load; code-running pickles do not."""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import pickletools
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qamoe_core.base.errors import DataFormatError, InputError
from qamoe_core.data.importers.safe_pickle import safe_load, safe_loads


class Evil:
    """Pickles as ``fn(*args)``: what an attacker's file does when plainly unpickled."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


def _writes_marker(marker: Path) -> list[tuple[str, Any]]:
    """(expected global in the message, payload) pairs; each would create ``marker``."""
    code = f"open({str(marker)!r}, 'w').close()"
    return [
        ("builtins.exec", Evil(builtins.exec, code)),
        ("builtins.eval", Evil(builtins.eval, code)),
        (f"{os.system.__module__}.system", Evil(os.system, f"touch '{marker}'")),
        ("subprocess.call", Evil(subprocess.call, ["touch", str(marker)])),
    ]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_and_containers_round_trip(protocol: int) -> None:
    rng = np.random.default_rng(0)
    obj: dict[str, Any] = {
        "f64": rng.standard_normal((3, 4, 5)),
        "f32_fortran": np.asfortranarray(rng.standard_normal((4, 3)).astype(np.float32)),
        "int": np.arange(7, dtype=np.int64),
        "bool": np.array([True, False]),
        "neg_inf": np.array([-np.inf, 1.0]),
        "unicode": np.array(["vid$_$1", "été"]),
        "objects": np.array(["a", "bb", None], dtype=object),
        "scalar": np.float64(2.5),
        "int_scalar": np.int32(3),
        "nested": [(1, 2.0, "x", None, b"raw\x00\xff"), {"deep": [np.zeros(2)]}],
        "set": {1, 2},
        "frozen": frozenset({"a"}),
        "complex": 1 + 2j,
        "ordered": collections.OrderedDict(a=1),
        "bytearray": bytearray(b"ab"),
    }
    back = safe_loads(pickle.dumps(obj, protocol=protocol))
    assert back.keys() == obj.keys()
    for key in ("f64", "f32_fortran", "int", "bool", "neg_inf", "unicode", "objects"):
        np.testing.assert_array_equal(back[key], obj[key])
        assert back[key].dtype == obj[key].dtype
    assert back["scalar"] == 2.5 and isinstance(back["scalar"], np.float64)
    assert back["nested"][0] == obj["nested"][0]
    np.testing.assert_array_equal(back["nested"][1]["deep"][0], np.zeros(2))
    for key in ("set", "frozen", "complex", "ordered", "bytearray", "int_scalar"):
        assert back[key] == obj[key]


def test_torch_tensors_are_rebuilt_safely() -> None:
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    obj = {
        "f64": base,
        "view": base[:, 1:3],  # shares a storage, non-zero offset and strides
        "ids": torch.tensor([[101, 7, 102]], dtype=torch.int64),
        "grad": torch.ones(2, requires_grad=True),
        "size": torch.Size([2, 3]),
    }
    back = safe_loads(pickle.dumps(obj))
    torch.testing.assert_close(back["f64"], base)
    torch.testing.assert_close(back["view"], base[:, 1:3])
    assert back["ids"].dtype == torch.int64 and back["ids"].tolist() == [[101, 7, 102]]
    assert not back["grad"].requires_grad  # data, not a graph
    assert back["size"] == torch.Size([2, 3])


def test_torch_can_be_disabled() -> None:
    with pytest.raises(DataFormatError, match=r"torch\._utils\._rebuild_tensor_v2.*disabled"):
        safe_loads(pickle.dumps({"x": torch.zeros(2)}), allow_torch=False)


@pytest.mark.parametrize("variant", range(4))
def test_plain_pickle_would_run_the_payload(tmp_path: Path, variant: int) -> None:
    """Control: each payload's bytes hold a call (REDUCE) of its callable, and honouring that
    recipe, which is all a plain unpickler does, really runs it; so refusing them matters.
    The recipe is run directly: no plain unpickler is ever handed a payload, even in tests."""
    marker = tmp_path / "control"
    name, payload = _writes_marker(marker)[variant]
    data = pickle.dumps(payload, protocol=4)
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    assert ("SHORT_BINUNICODE", name.rsplit(".", 1)[1]) in ops and ("REDUCE", None) in ops
    fn, args = payload.__reduce__()
    fn(*args)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DataFormatError, match=re.escape(f"references {name}, which could")):
        safe_loads(data)
    assert not marker.exists()


@pytest.mark.parametrize("variant", range(4))
@pytest.mark.parametrize("wrap", ["bare", "nested"])
def test_code_running_pickles_are_refused(tmp_path: Path, variant: int, wrap: str) -> None:
    marker = tmp_path / "pwned"
    name, payload = _writes_marker(marker)[variant]
    if wrap == "nested":  # hidden deep inside an otherwise legitimate MMSA-like dict
        payload = {"train": {"text": np.zeros((1, 2, 3)), "extra": [1, (payload,)]}}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2 if wrap == "nested" else 4))
    with pytest.raises(DataFormatError) as info:
        safe_load(path)
    assert not marker.exists()
    assert f"references {name}, which could run code" in info.value.message
    assert str(path) in info.value.message
    assert info.value.hint


@pytest.mark.parametrize(
    "module, name",
    [
        ("__builtin__", "eval"),  # Python-2 spelling of builtins
        ("copyreg", "_reconstructor"),  # builds arbitrary classes
        ("numpy", "load"),  # allow_pickle=True would be a second unrestricted unpickler
        ("torch", "load"),  # torch globals other than tensor rebuilding are refused too
        ("pathlib", "Path"),  # harmless but not data: the list is an allow-list
        ("collections", "Counter"),
    ],
)
def test_other_globals_are_refused(module: str, name: str) -> None:
    data = f"c{module}\n{name}\n(tR.".encode()  # protocol 0: GLOBAL, empty tuple, REDUCE
    with pytest.raises(DataFormatError, match=r"refused to load: it references"):
        safe_loads(data)


def test_codecs_encode_only_latin1() -> None:
    # Protocol 2 spells bytes as _codecs.encode(str, 'latin1'); other codecs are refused.
    assert safe_loads(pickle.dumps(b"\x00\xff", protocol=2)) == b"\x00\xff"
    data = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    with pytest.raises(DataFormatError, match="not a readable pickle"):
        safe_loads(data)


def test_malicious_tensor_storage_is_refused(tmp_path: Path) -> None:
    """A 'tensor' whose storage blob is a torch.save of a payload: torch's weights_only stops it."""
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(Evil(builtins.exec, f"open({str(marker)!r}, 'w').close()"), buf)
    data = pickle.dumps(Evil(torch.storage._load_from_bytes, buf.getvalue()))
    with pytest.raises(DataFormatError) as info:
        safe_loads(data)
    assert not marker.exists()
    # one line naming the global (torch's own message is a paragraph), refused as code
    message = info.value.message
    assert "references builtins.exec (inside a torch storage blob), which could run code" in message
    assert "\n" not in message and "weights_only" not in message
    assert info.value.hint


def test_foreign_errors_keep_their_first_line_only() -> None:
    """A storage blob torch cannot read for another reason: one line, no PyTorch paragraph."""
    data = pickle.dumps(Evil(torch.storage._load_from_bytes, b"g\n"))  # GET opcode: 'unsupported'
    with pytest.raises(DataFormatError, match="not a readable pickle") as info:
        safe_loads(data)
    assert "\n" not in info.value.message and "Check the documentation" not in info.value.message
    assert "torch storage blob" in info.value.message
    assert info.value.hint


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is a CSV file\n1,2,3\n", b"\x89HDF\r\n\x1a\n" + bytes(64), b"\x80\x04K"],
    ids=["empty", "text", "hdf5", "truncated"],
)
def test_not_a_pickle(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match="is not a readable pickle"):
        safe_load(path)


def test_persistent_ids_are_refused() -> None:
    with pytest.raises(DataFormatError, match="persistent"):
        safe_loads(b"Pabc\n.")  # protocol 0 PERSID


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        safe_load(tmp_path / "nope.pkl")
    with pytest.raises(InputError, match="directory"):
        safe_load(tmp_path)

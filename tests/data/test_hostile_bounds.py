"""Hostile feature files, issue 26 items 3, 4, 7 and 8: memory follows the file and a budget,
never a declared shape; group trees are capped; SIGTERM/Ctrl-C end a command within a second
even where Python drops the exception; every dtype and shape the schema allows is read
correctly or refused on open; the library API checks batches as the file reader does."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import qamoe_core as qa
from qamoe_cli.main import main
from qamoe_core.base.errors import DataFormatError, InputError, TooLargeError, UsageError
from qamoe_core.data.store import FeatureFile, normalize_batch

REPO = Path(__file__).resolve().parents[2]
MODEL_JSON = {"d_model": 16, "n_heads": 2, "segments": 4, "num_experts": 4, "top_k": 2}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "QAMOE_MEMORY_BUDGET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def _copy(tiny_h5: Path, folder: Path, name: str) -> Path:
    path = folder / name
    shutil.copy(tiny_h5, path)
    return path


def _splits(h5: h5py.File) -> list[tuple[h5py.Group, int]]:
    return [(h5[s], h5[s]["label"].shape[0]) for s in ("train", "valid", "test")]


def _replace(g: h5py.Group, key: str, **kwargs: Any) -> None:
    del g[key]
    g.create_dataset(key, **kwargs)


def _one_error(err: str) -> str:
    """The error line of a CLI failure, checking it is one line (plus a hint) and no trace."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err and "unexpected" not in err, err
    assert lines and lines[0].startswith("error:") and len(lines) <= 2, err
    return lines[0]


# -- item 3: memory follows the file and the budget ------------------------------------------
def _forged(tiny_h5: Path, folder: Path) -> dict[str, Path]:
    """The issue's files: tiny.h5 with empty gzip-chunked datasets of huge declared shapes
    (each ~200 KB on disk), and with 2,000 nested groups."""
    files = {}
    for name, shape, chunks in (("long", (6_000_000, 5), (1000, 5)),
                                ("wide", (1, 100_000_000), (1, 100_000))):  # fmt: skip
        files[name] = _copy(tiny_h5, folder, f"{name}.h5")
        with h5py.File(files[name], "a") as h5:
            for g, n in _splits(h5):
                _replace(g, "audio", shape=(n, *shape), dtype="f4", chunks=(1, *chunks),
                         compression="gzip")  # fmt: skip
                g["audio_len"][:] = np.minimum(g["audio_len"][:], shape[0])
    files["rows"] = _copy(tiny_h5, folder, "rows.h5")
    with h5py.File(files["rows"], "a") as h5:
        g, n = h5["test"], 10**9
        for key, shape, dtype in (("label", (n,), "f4"), ("ids", (n,), h5py.string_dtype()),
                                  ("text_len", (n,), "i4"), ("audio_len", (n,), "i4"),
                                  ("vision_len", (n,), "i4")):  # fmt: skip
            _replace(g, key, shape=shape, dtype=dtype, chunks=(10**5,), compression="gzip")
        for m in ("text", "audio", "vision"):
            t, d = g[m].shape[1:]
            _replace(g, m, shape=(n, t, d), dtype="f4", chunks=(64, t, d), compression="gzip")
    files["deep"] = _deep(tiny_h5, folder)
    return files


def _deep(tiny_h5: Path, folder: Path, levels: int = 2000) -> Path:
    path = _copy(tiny_h5, folder, "deep.h5")
    with h5py.File(path, "a") as h5:
        g = h5.create_group("junk")
        for _ in range(levels):
            g = g.create_group("g")
    return path


def _big_rows(tiny_h5: Path, folder: Path) -> Path:
    """Honest but large rows: audio of 50,000 steps (1 MiB a row), fully written."""
    path = _copy(tiny_h5, folder, "bigrows.h5")
    with h5py.File(path, "a") as h5:
        for g, n in _splits(h5):
            old = g["audio"][:]
            _replace(g, "audio", shape=(n, 50_000, 5), dtype="f4", chunks=(1, 50_000, 5),
                     compression="gzip")  # fmt: skip
            g["audio"][:, : old.shape[1]] = old
    return path


_DRIVER = """
import contextlib, io, json, resource, sys, time
from qamoe_cli.main import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    results.append({"args": args, "code": code, "s": time.perf_counter() - t0,
                    "err": err.getvalue()})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
print(json.dumps({"results": results, "peak": peak}))
"""


def _drive(commands: list[list[str]], cap: int = 6 << 30) -> tuple[list[dict[str, Any]], int]:
    """Run CLI commands in one child process (address space capped at ``cap``, so that a
    regression cannot take the machine's memory); return their results and the child's peak
    resident size in bytes."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    done = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(commands)],
                          capture_output=True, text=True, env=_env(), preexec_fn=limit,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["results"], int(report["peak"])


def test_declared_sizes_never_drive_memory_in_any_command(
    tiny_h5: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """audit, train, eval and corrupt on the issue's files: each refuses in seconds with one
    line naming the file, the key and the declared shape, and the child's peak resident size
    stays far below what the declared shapes would take (before: 4 to 7 GB, minutes)."""
    files = _forged(tiny_h5, tmp_path)
    big = _big_rows(tiny_h5, tmp_path)
    commands, budget = [], ["--memory-budget", "32M"]
    for name, path in [*files.items(), ("big", big)]:
        extra = budget if name == "big" else []
        commands += [
            ["audit", str(path), *extra],
            ["train", str(path), "--out", str(tmp_path / f"r-{name}"), "--epochs", "1", *extra],
            ["eval", str(tiny_run), "--data", str(path), "--device", "cpu", *extra],
            ["corrupt", str(path), "--level", "0.3", "-o", str(tmp_path / f"c-{name}.h5"), *extra],
        ]
    commands.append(["eval", str(tiny_run), "--data", str(big), "--no-shuffle", "--device", "cpu",
                     "--batch-size", "8", *budget])  # fmt: skip
    results, peak = _drive(commands)
    assert peak < 1 << 30, f"peak RSS {peak / 2**20:.0f} MiB"
    by = {(Path(r["args"][1 if r["args"][0] != "eval" else 3]).stem, r["args"][0],
           "--no-shuffle" in r["args"]): r for r in results}  # fmt: skip
    for name in files:
        for command in ("audit", "train", "eval", "corrupt"):
            r = by[(name, command, False)]
            line = _one_error(r["err"])
            assert r["code"] == 1 and r["s"] < 10, (name, command, r)
            assert f"{name}.h5" in line, line
    for name, key, shape in (("long", "train/audio", "(64, 6000000, 5)"),
                             ("wide", "train/audio", "(64, 1, 100000000)"),
                             ("rows", "test/label", "(1000000000,)")):  # fmt: skip
        line = _one_error(by[(name, "audit", False)]["err"])
        assert f"'{key}' declares shape {shape}" in line and "stores 0 of its" in line, line
    assert "lies 33 groups deep" in _one_error(by[("deep", "eval", False)]["err"])
    # Honest 1 MiB rows under a 32 MiB budget: audit, corrupt and eval --no-shuffle (8-row
    # mini-batches: its blocks are whole mini-batches) stream in small blocks; a training batch
    # of 64 rows and a shuffle window of 256 cannot fit.
    for command in ("audit", "corrupt"):
        assert by[("bigrows", command, False)]["code"] == 0, by[("bigrows", command, False)]
    assert by[("bigrows", "eval", True)]["code"] == 0, by[("bigrows", "eval", True)]
    window = "a mini-batch (whole quality-shuffle windows) of 32 row(s) of split 'test'"
    for command, what in (("train", "a batch of 64 row(s) of split 'train'"), ("eval", window)):
        line = _one_error(by[("bigrows", command, False)]["err"])
        assert what in line and "/audio' declares shape (" in line, line
        assert "50000, 5) float32" in line and "beyond the memory budget of 32 MiB" in line, line
    assert not (tmp_path / "r-big").exists()


def test_the_budget_bounds_reads_chunks_and_row_counts(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QAMOE_MEMORY_BUDGET", "16M")
    big = _big_rows(tiny_h5, tmp_path)
    with FeatureFile(big) as f:
        assert f.block_rows("train", 256) == 8  # 16 MiB / (2 copies x 1 MiB rows)
        with pytest.raises(TooLargeError) as err:
            f.read("train", slice(None))
        assert "reading 64 row(s) of split 'train' at once" in str(err.value)
        assert "'train/audio' declares shape (64, 50000, 5)" in str(err.value)
        assert "memory budget of 16 MiB" in str(err.value)
    with pytest.raises(TooLargeError, match="memory budget of 16 MiB"):
        qa.read_batch(big, split="train")
    # One compressed chunk holding every row: unpacking any row would unpack all of it.
    lump = _copy(tiny_h5, tmp_path, "lump.h5")
    with h5py.File(lump, "a") as h5:
        g, n = _splits(h5)[0]
        _replace(g, "audio", data=np.zeros((n, 40_000, 5), "f4"), chunks=(n, 40_000, 5),
                 compression="gzip")  # fmt: skip
    with pytest.raises(TooLargeError) as err:
        FeatureFile(lump)
    text = "'train/audio' (shape (64, 40000, 5) float32) is stored in chunks of (64, 40000, 5)"
    assert text in str(err.value)
    assert "memory budget of 16 MiB" in str(err.value) and "\n" not in str(err.value)
    # 70,000 rows' ids, labels and results need more than 16 MiB even with one-step features.
    many = tmp_path / "many.h5"
    shutil.copy(tiny_h5, many)
    with h5py.File(many, "a") as h5:
        g, n = h5["test"], 70_000
        _replace(g, "label", data=np.zeros(n, "f4"))
        _replace(g, "ids", data=np.array([f"v{i}_1" for i in range(n)], dtype=object),
                 dtype=h5py.string_dtype())  # fmt: skip
        for m in ("text", "audio", "vision"):
            _replace(g, m, data=np.zeros((n, 1, g[m].shape[2]), "f4"))
            _replace(g, f"{m}_len", data=np.ones(n, "i4"))
    with pytest.raises(TooLargeError) as err:
        FeatureFile(many)
    assert "split 'test' declares 70,000 rows" in str(err.value)
    assert "memory budget of 16 MiB" in str(err.value)
    monkeypatch.setenv("QAMOE_MEMORY_BUDGET", "1G")
    with FeatureFile(many) as f:
        assert f.n("test") == n


def test_predict_on_a_file_streams_within_the_budget(
    tiny_h5: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = qa.load_run(tiny_run)
    whole = qa.predict(run, qa.read_batch(tiny_h5, split="test"))
    monkeypatch.setenv("QAMOE_MEMORY_BUDGET", "16M")
    with FeatureFile(tiny_h5) as f:
        per_row = f.row_bytes("test")
    monkeypatch.setattr(FeatureFile, "row_bytes", lambda self, split: per_row * 250)
    blocks: list[int] = []
    read = FeatureFile.read

    def counted(self: FeatureFile, split: str, rows: Any) -> dict[str, np.ndarray]:
        out = read(self, split, rows)
        blocks.append(len(out["label"]))
        return out

    monkeypatch.setattr(FeatureFile, "read", counted)
    # Rows now "weigh" ~400 KB: 16 MiB holds ~10 of them (4 copies), so 32 rows need 4 blocks.
    streamed = qa.predict(run, tiny_h5, split="test", batch_size=8)
    assert len(blocks) >= 3 and sum(blocks) == 32, blocks
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-6)


def test_a_budget_that_is_not_a_size_is_a_usage_error(
    tiny_h5: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["audit", str(tiny_h5), "--memory-budget", "lots"]) == 2
    assert "'--memory-budget' value must be a size" in _one_error(capsys.readouterr().err)
    monkeypatch.setenv("QAMOE_MEMORY_BUDGET", "1")
    assert main(["audit", str(tiny_h5)]) == 2
    assert "'QAMOE_MEMORY_BUDGET' value must be a size" in capsys.readouterr().err


# -- item 4: group trees --------------------------------------------------------------------
def test_deep_and_wide_group_trees_are_refused_at_once(tiny_h5: Path, tmp_path: Path) -> None:
    deep = _deep(tiny_h5, tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(TooLargeError) as err:
        FeatureFile(deep)
    assert time.perf_counter() - t0 < 1.0  # before: every command ran past 240 s
    assert "lies 33 groups deep; qamoe walks at most 32 levels" in str(err.value)
    wide = _copy(tiny_h5, tmp_path, "wide.h5")
    with h5py.File(wide, "a") as h5:
        g = h5.create_group("junk")
        for i in range(10_001):
            g.create_group(str(i))
    t0 = time.perf_counter()
    with pytest.raises(TooLargeError, match="'/junk' holds 10,001 links"):
        FeatureFile(wide)
    assert time.perf_counter() - t0 < 1.0
    # A hard-link cycle is walked once, and a modest extra tree is fine.
    loop = _copy(tiny_h5, tmp_path, "loop.h5")
    with h5py.File(loop, "a") as h5:
        h5["train/again"] = h5["/"]
        h5.create_group("notes/a/b/c")
    with FeatureFile(loop) as f:
        assert f.n("train") == 64


# -- signals ---------------------------------------------------------------------------------
_STUCK = """
import hashlib, sys, time
import qamoe_core.data.synthetic as synthetic
from qamoe_core.base.atomic import atomic_path

def stuck(path, **kwargs):
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        print("ready", flush=True)
        if sys.argv[1] == "dropped":  # the exception fires where Python drops it (h5py did)
            while True:
                try:
                    time.sleep(0.05)
                except BaseException:
                    pass
        hashlib.pbkdf2_hmac("sha256", b"k", b"s", 10**9)  # minutes inside one C call

synthetic.write_synthetic = stuck
from qamoe_cli.main import run
sys.argv = ["qamoe", "extract", "synthetic", "--preset", "tiny", "-o", sys.argv[2]]
run()
"""


@pytest.mark.parametrize(("how", "sig", "code", "word"),
                         [("dropped", signal.SIGTERM, 143, "terminated"),
                          ("c-call", signal.SIGINT, 130, "interrupted")])  # fmt: skip
def test_signals_end_the_command_within_a_second(
    tmp_path: Path, how: str, sig: int, code: int, word: str
) -> None:
    out = tmp_path / "d.h5"
    proc = subprocess.Popen([sys.executable, "-c", _STUCK, how, str(out)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # inside the loop or the C call, not before it
        t0 = time.perf_counter()
        proc.send_signal(sig)
        proc.wait(timeout=10)
        took = time.perf_counter() - t0
    finally:
        proc.kill()
    assert proc.returncode == code and took < 2.0, (proc.returncode, took)
    assert f"error: {word}." in _one_error(proc.stderr.read() if proc.stderr else "")
    assert not out.exists()  # at most a temporary, which the next command sweeps
    assert main(["extract", "synthetic", "--preset", "tiny", "-o", str(out), "-q"]) == 0
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


# -- item 7: dtypes and shapes ----------------------------------------------------------------
def _users_own_file(tiny_h5: Path, path: Path, dtype: str) -> Path:
    """tiny.h5 rewritten by a plain h5py script: features as ``dtype``, lengths int64, no
    chunking or compression, attrs copied."""
    with h5py.File(tiny_h5) as src, h5py.File(path, "w") as dst:
        dst.attrs.update(dict(src.attrs))
        for s in ("train", "valid", "test"):
            for key, ds in src[s].items():
                value = ds[:]
                if key in ("ids", "raw_text"):
                    value = np.array(value, dtype="S")  # fixed-length bytes, as numpy makes
                elif key in ("text", "audio", "vision"):
                    value = value.astype(dtype)
                elif key.endswith("_len"):
                    value = value.astype(np.int64)
                dst[f"{s}/{key}"] = value
    return path


def test_float64_and_float16_features_are_read_as_float32(tiny_h5: Path, tmp_path: Path) -> None:
    for dtype in ("float64", "float16"):
        path = _users_own_file(tiny_h5, tmp_path / f"{dtype}.h5", dtype)
        with FeatureFile(path) as f, FeatureFile(tiny_h5) as ref:
            got, want = f.read("valid", [3, 1, 2]), ref.read("valid", [3, 1, 2])
        assert got["audio"].dtype == np.float32 and got["audio_len"].dtype == np.int64
        expected = want["audio"].astype(dtype).astype(np.float32)
        np.testing.assert_array_equal(got["audio"], expected)


def test_a_float64_file_from_a_users_script_works_in_every_command(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _users_own_file(tiny_h5, tmp_path / "mine.h5", "float64")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": MODEL_JSON, "train": {"batch_size": 32}}))
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--config", str(cfg), "--epochs", "1",
                 "-q", "--device", "cpu"]) == 0, capsys.readouterr().err  # fmt: skip
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(path), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["points"] == 1
    assert main(["corrupt", str(path), "-l", "0.3", "-o", str(tmp_path / "c.h5"), "-q"]) == 0
    capsys.readouterr()
    assert main(["audit", str(path), "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["splits"]["train"]["n"] == 64


def _edit(tiny_h5: Path, tmp_path: Path, edit: Any) -> Path:
    path = _copy(tiny_h5, tmp_path, "edited.h5")
    with h5py.File(path, "a") as h5:
        edit(h5)
    return path


def _set_modalities(value: str) -> Any:
    return lambda h5: h5.attrs.__setitem__("modalities", value)


def _keep(dtype: str, value: float = 1) -> Any:
    def edit(h5: h5py.File) -> None:
        for g, n in _splits(h5):
            g["audio_keep"] = np.full((n, g["audio"].shape[1]), value, dtype=dtype)

    return edit


def _lengths(data: Any) -> Any:
    def edit(h5: h5py.File) -> None:
        for g, n in _splits(h5):
            _replace(g, "vision_len", data=data(g["vision_len"][:], n))

    return edit


def _zero_axis(axis: int) -> Any:
    def edit(h5: h5py.File) -> None:
        for g, n in _splits(h5):
            shape = [n, *g["audio"].shape[1:]]
            shape[axis] = 0
            _replace(g, "audio", shape=tuple(shape), dtype="f4")

    return edit


@pytest.mark.parametrize(("edit", "command", "message"), [
    (_zero_axis(2), "audit", "'train/audio' has shape (64, 12, 0); expected (64, T, D) with "
                             "at least one time step (T) and one feature dimension (D)"),
    (_zero_axis(1), "eval", "'train/audio' has shape (64, 0, 5)"),
    (_zero_axis(1), "corrupt", "'train/audio' has shape (64, 0, 5)"),
    (_keep("f4", 0.5), "corrupt", "'train/audio_keep' has shape (64, 12) and dtype float32; it "
                                  "must hold booleans (or 0/1 integers)"),
    (_set_modalities('["text", "audio", "audio"]'), "audit", "names a modality twice"),
    (_set_modalities('["text", "smell"]'), "audit", "names 'smell'"),
    (_lengths(lambda v, n: v.astype("f8")), "train", "'train/vision_len' has shape (64,) and "
                                                     "dtype float64; it must hold integer"),
    (_lengths(lambda v, n: np.array([b"5"] * n)), "eval", "'train/vision_len' has shape (64,) "
                                                          "and dtype |S1"),
    (_keep("i1", 2), "corrupt", "'audio_keep' holds values other than 0 and 1 (2 to 2)"),
])  # fmt: skip
def test_shapes_and_dtypes_outside_the_schema_are_one_line_errors(
    tiny_h5: Path, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    edit: Any, command: str, message: str,
) -> None:  # fmt: skip
    path = _edit(tiny_h5, tmp_path, edit)
    args = {
        "audit": ["audit", str(path)],
        "eval": ["eval", str(tiny_run), "--data", str(path), "--device", "cpu"],
        "corrupt": ["corrupt", str(path), "-l", "0.2", "-o", str(tmp_path / "o.h5")],
        "train": ["train", str(path), "--out", str(tmp_path / "r"), "--epochs", "1"],
    }[command]
    assert main(args) == 1
    line = _one_error(capsys.readouterr().err)
    assert message in line and "edited.h5" in line, line
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "r").exists()


def test_integer_keep_masks_of_zeros_and_ones_are_read_as_booleans(
    tiny_h5: Path, tmp_path: Path
) -> None:
    path = _edit(tiny_h5, tmp_path, _keep("u1", 1))
    with FeatureFile(path) as f:
        keep = f.read("test", slice(0, 4))["audio_keep"]
    assert keep.dtype == bool and keep.all()


# -- item 8: the library API checks batches as the reader does -------------------------------
def test_predict_refuses_what_the_reader_refuses(tiny_h5: Path, tiny_run: Path) -> None:
    run = qa.load_run(tiny_run)
    batch = qa.read_batch(tiny_h5, split="test", rows=slice(0, 4))
    t = batch["audio"].shape[1]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"audio_len": np.array([-5, 1, 1, 1])}, f"'audio_len' holds lengths outside [0, {t}]"),
        ({"audio_len": np.array([10**6, 1, 1, 1])}, "(min 1, max 1000000)"),
        ({"audio_len": batch["audio_len"].astype(float)}, "'audio_len' must hold integers"),
        ({"audio_len": np.array([b"5"] * 4)}, "'audio_len' must hold integers"),
        ({"audio_len": [5, 5, 5, 5]}, "'audio_len' is a list, not a numpy array"),
        ({"text_len": None}, "the batch has no 'text_len'"),
        ({"audio": batch["audio"][:, :, :3]}, "'audio' has 3 feature dims; the run was trained"),
        ({"vision": batch["vision"][:2]}, "'vision' must hold floats of shape (4, ?, ?)"),
        ({"text": np.full_like(batch["text"], np.nan)}, "'text' holds"),
        ({"audio_keep": np.full(batch["audio"].shape[:2], 0.5)}, "'audio_keep' must hold bool"),
    ]
    for change, message in cases:
        bad = {**batch, **change}
        bad = {k: v for k, v in bad.items() if v is not None}
        with pytest.raises(UsageError) as err:
            qa.predict(run, bad)
        assert message in str(err.value) and "\n" not in str(err.value), (change, err.value)
    with pytest.raises(UsageError, match="not a dict of arrays"):
        qa.predict(run, [batch])  # type: ignore[arg-type]
    # Accepted and converted as the reader converts: float64 features, int32 lengths, torch.
    import torch

    wide = {**batch, "audio": batch["audio"].astype(np.float64),
            "text_len": batch["text_len"].astype(np.int32)}  # fmt: skip
    as_torch = {k: torch.from_numpy(v) for k, v in batch.items() if k != "ids"}
    want = qa.predict(run, batch)
    np.testing.assert_allclose(qa.predict(run, wide), want, rtol=1e-6)
    np.testing.assert_allclose(qa.predict(run, as_torch), want, rtol=1e-6)


def test_corrupt_batch_and_read_batch_check_their_input(tiny_h5: Path) -> None:
    batch = qa.read_batch(tiny_h5, split="test", rows=[5, 2])
    for change, message in [({"audio_len": np.array([1.5, 2.0])}, "'audio_len' must hold int"),
                            ({"index": np.array([0.0, 1.0])}, "'index' must hold integers"),
                            ({"text_len": np.array([99, 1])}, "lengths outside")]:  # fmt: skip
        with pytest.raises(UsageError, match=message.replace("(", r"\(")):
            qa.corrupt_batch({**batch, **change}, level=0.3, split="test", source=tiny_h5)
    with pytest.raises(UsageError, match="has no 'audio_len'"):
        bad = {k: v for k, v in batch.items() if k != "audio_len"}
        qa.corrupt_batch(bad, level=0.3, split="test", source=tiny_h5)
    with pytest.raises(InputError, match="must be a slice or a 1-D sequence of row numbers"):
        qa.read_batch(tiny_h5, split="test", rows=[0.5, 1.0])


def test_the_reader_and_the_api_share_one_check(tiny_h5: Path, tmp_path: Path) -> None:
    """FeatureFile.read and the API call the same normalize_batch: the same bad lengths are
    refused by both, with the same words."""
    path = _edit(tiny_h5, tmp_path, _lengths(lambda v, n: np.full(n, -5, "i4")))
    with FeatureFile(path) as f, pytest.raises(DataFormatError) as from_file:
        f.read("test", slice(0, 4))
    batch = qa.read_batch(tiny_h5, split="test", rows=slice(0, 4))
    batch["vision_len"] = np.full(4, -5)
    with pytest.raises(UsageError) as from_api:
        normalize_batch(batch, "the batch", error=UsageError)
    words = "'vision_len' holds lengths outside [0, "
    assert words in str(from_file.value) and words in str(from_api.value)

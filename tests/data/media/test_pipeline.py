"""extract_media end to end on generated clips: failures, resume, shards + merge, workers."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("librosa")
pytest.importorskip("transformers")
pytest.importorskip("av")

from qamoe_core.base.errors import ConfigError, DataFormatError, InputError, OutputExistsError
from qamoe_core.data.media import MediaConfig, extract_media, read_manifest
from qamoe_core.data.media.config import failures_path, work_root
from qamoe_core.data.store import FeatureFile, validate
from tests.cli.test_nonregular_inputs import finishes
from tests.data.media import mediagen

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("cached_models")]

HAAR = MediaConfig(vision="haar")  # OpenCV only: the fastest complete configuration


def manifest_with_failures(folder: Path, clips_dir: Path) -> Path:
    """The 6 good clips (absolute paths) plus 3 that must fail, one way each."""
    good = read_manifest(clips_dir / "manifest.csv").clips
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "junk.avi").write_bytes(b"definitely not a video")
    silent = mediagen.write_video_cv2(folder / "silent.avi", mediagen.frames([True] * 4))
    rows = [[c.id, c.split, c.label, c.text, c.audio or "", c.video or ""] for c in good]
    rows += [
        ["m_missing", "train", 1, "gone", folder / "gone.wav", good[1].video],
        ["m_junk", "test", -1, "junk", good[1].audio, folder / "junk.avi"],
        ["m_silent", "valid", 0, "no sound", "", silent],
    ]
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "split", "label", "text", "audio", "video"])
        w.writerows(rows)
    return path


def read_all(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with FeatureFile(path) as f:
        return {s: f.read(s, slice(None)) | {"ids": np.array(f.ids(s))} for s in f.splits}


def assert_same_file(a: Path, b: Path) -> None:
    da, db = read_all(a), read_all(b)
    assert da.keys() == db.keys()
    for s in da:
        assert da[s].keys() == db[s].keys()
        for k in da[s]:
            if da[s][k].dtype.kind == "U":
                np.testing.assert_array_equal(da[s][k], db[s][k])
                continue
            np.testing.assert_allclose(da[s][k], db[s][k], rtol=0, atol=1e-5, err_msg=f"{s}/{k}")
    with FeatureFile(a) as fa, FeatureFile(b) as fb:
        for m in fa.modalities:
            np.testing.assert_allclose(fa.train_std(m), fb.train_std(m), rtol=1e-5)


def test_failures_are_recorded_and_the_run_goes_on(tmp_path: Path, clips_dir: Path) -> None:
    manifest = manifest_with_failures(tmp_path / "in", clips_dir)
    out = tmp_path / "feats.h5"
    ticks: list[dict[str, float]] = []
    s = extract_media(manifest, out, HAAR, progress=lambda n=1, **f: ticks.append(f))
    assert (s["extracted"], s["failed"], s["resumed"]) == (6, 3, 0)
    assert len(ticks) == 9 and ticks[-1]["failed"] == 3 and ticks[-1]["clips_per_s"] > 0
    with open(failures_path(out), newline="") as fh:
        failures = {r["id"]: r for r in csv.DictReader(fh)}
    assert set(failures) == {"m_missing", "m_junk", "m_silent"}
    assert failures["m_missing"]["stage"] == "audio"
    assert "file not found" in failures["m_missing"]["reason"]
    assert failures["m_junk"]["stage"] == "vision" and failures["m_junk"]["split"] == "test"
    assert "no audio track" in failures["m_silent"]["reason"]

    validate(out)
    with FeatureFile(out) as f:
        assert f.modalities == ("text", "audio", "vision")
        assert f.dims == {"text": 384, "audio": 63, "vision": 293}
        clips = read_manifest(manifest).clips
        want = [c.id for c in clips if c.split == "train" and not c.id.startswith("m_")]
        assert f.ids("train") == want  # manifest order
        extractor = json.loads(f.attrs["extractor"])
        assert extractor["audio"]["frame_rate_hz"] == 50.0 and extractor["vision"]["dim"] == 293
        assert f.attrs["audio_frame_rate_hz"] == 50.0 and f.attrs["vision_frame_rate_hz"] == 10.0
        assert f.raw_text("train")[0] == mediagen.SENTENCES[0][0]
        no_face = total = 0
        for split in f.splits:
            b = f.read(split, slice(None))
            # 1.2 s clips: 12 frames at 10/s; audio about 50 frames/s of the clip's sound
            assert (b["vision_len"] == 12).all()
            assert (b["audio_len"] > 40).all() and (b["text_len"] >= 8).all()
            valid = np.arange(b["vision"].shape[1])[None] < b["vision_len"][:, None]
            no_face += int((b["vision"][..., 0][valid] == 0).sum())
            total += int(valid.sum())
        assert f.attrs["vision_frames"] == total == 72
        assert f.attrs["vision_frames_no_face"] == no_face >= 36  # half the frames are blank
        assert f.train_std("audio").shape == (63,)
    # Failures keep the cache so that a later --resume retries only them.
    assert s["work_dir_kept"] == str(work_root(out))
    assert len(list(work_root(out).glob("shard-0-of-1/clips/*.npz"))) == 6

    with pytest.raises(OutputExistsError):
        extract_media(manifest, out, HAAR)
    out.unlink()
    with pytest.raises(InputError, match="An earlier run left"):
        extract_media(manifest, out, HAAR)


def test_resume_redoes_nothing_that_finished(tmp_path: Path, clips_dir: Path) -> None:
    out = tmp_path / "feats.h5"
    manifest = clips_dir / "manifest.csv"
    seen: list[int] = []

    def interrupt(n: int = 1, **fields: float) -> None:
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_media(manifest, out, HAAR, progress=interrupt)
    assert not out.exists()
    done = sorted(work_root(out).glob("shard-0-of-1/clips/*.npz"))
    assert len(done) == 2
    stamps = {p: p.stat().st_mtime_ns for p in done}
    with pytest.raises(ConfigError, match="other settings"):
        extract_media(manifest, out, MediaConfig(vision="haar", vision_fps=5), resume=True)
    unchanged: list[bool] = []

    def watch(n: int = 1, **fields: float) -> None:
        unchanged.append(all(p.stat().st_mtime_ns == t for p, t in stamps.items()))

    s = extract_media(manifest, out, HAAR, resume=True, progress=watch)
    assert (s["resumed"], s["extracted"], s["failed"]) == (2, 4, 0)
    assert len(unchanged) == 5 and all(unchanged)  # 1 call for the cached two, then 4
    assert s["work_dir_kept"] is None and not work_root(out).exists()
    fresh = tmp_path / "fresh.h5"
    extract_media(manifest, fresh, HAAR)
    assert_same_file(out, fresh)


def test_shards_then_merge_equal_one_run(tmp_path: Path, clips_dir: Path) -> None:
    manifest = clips_dir / "manifest.csv"
    config = MediaConfig(vision="landmarks", modalities=("text", "audio", "vision"))
    whole = tmp_path / "whole.h5"
    extract_media(manifest, whole, config)
    out = tmp_path / "sharded.h5"
    first = extract_media(manifest, out, config, shard=(0, 3))
    assert first["shard"] == "0/3" and not out.exists() and "splits" not in first
    with pytest.raises(InputError, match=r"Shard\(s\) 1, 2 of 3 are missing"):
        extract_media(manifest, out, config, merge=True)
    counts = [first["clips"]]
    for i in (1, 2):
        counts.append(extract_media(manifest, out, config, shard=(i, 3))["clips"])
    assert sum(counts) == 6
    with pytest.raises(ConfigError, match="other settings"):
        extract_media(manifest, out, MediaConfig(vision="haar"), merge=True)
    run_json = work_root(out) / "shard-0-of-3" / "run.json"  # a pipe: refused, not read
    run_json.rename(run_json.with_name("kept.json"))
    os.mkfifo(run_json)
    with pytest.raises(InputError, match=r"run\.json' is a named pipe \(FIFO\)"):
        finishes(lambda: extract_media(manifest, out, config, merge=True), run_json)
    run_json.unlink()
    run_json.with_name("kept.json").rename(run_json)
    merged = extract_media(manifest, out, config, merge=True)
    assert merged["shards_merged"] == 3 and merged["splits"] == {"train": 4, "valid": 1, "test": 1}
    assert_same_file(whole, out)


def test_no_train_clip_left_is_an_error(tmp_path: Path, clips_dir: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "id,split,label,text,audio\n"
        f"a,train,1,hi,{tmp_path / 'gone.wav'}\n"
        f"b,test,1,hi,{clips_dir / 'media' / 'clip1.wav'}\n"
    )
    out = tmp_path / "o.h5"
    with pytest.raises(DataFormatError, match="No train clip"):
        extract_media(path, out, MediaConfig())
    assert not out.exists() and failures_path(out).exists()


def test_workers_match_one_process(tmp_path: Path, clips_dir: Path) -> None:
    manifest = clips_dir / "manifest.csv"
    # No text: each spawned worker would import transformers and load MiniLM (~10 s each).
    config = MediaConfig(vision="haar", modalities=("audio", "vision"))
    serial, parallel = tmp_path / "serial.h5", tmp_path / "parallel.h5"
    extract_media(manifest, serial, config)
    s = extract_media(manifest, parallel, config, workers=2)
    assert s["extracted"] == 6
    assert_same_file(serial, parallel)

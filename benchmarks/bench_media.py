"""Clips per second of each media extractor on 10-second clips, at most 2 cores; JSON out.

Generates its own media in a temporary folder (not timed): a 10 s utterance (espeak-ng when
installed, else a voiced tone) as a 16-bit WAV, a 10 s 640x360 video at 30 fps showing a real
face in every frame (scikit-image's astronaut photograph, else a drawn pattern) as MJPG .avi,
and the same video with the utterance as its AAC sound track in .mp4. Then times, after one
warm-up call each (model loading and numba compilation are reported separately):

- ``text``: all-MiniLM-L6-v2 token states of a 30-word transcript;
- ``audio_decode_wav`` / ``audio_decode_mp4``: decoding to mono 16 kHz (soundfile / PyAV);
- ``audio_librosa`` / ``audio_opensmile``: features from the decoded waveform;
- ``vision_landmarks`` / ``vision_haar``: decoding + face detection + features at 10 frames/s;
- ``pipeline_workers_1`` / ``pipeline_workers_2``: ``extract_media`` on ``--clips`` clips,
  all three modalities (landmarks), including process start-up and the final HDF5.

Single-extractor timings run in this process with torch and OpenCV limited to 2 threads.

    .venv/bin/python benchmarks/bench_media.py [--repeat 3] [--clips 6] [--out bench.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECONDS = 10.0
TRANSCRIPT = (
    "Honestly I did not expect much from this film, but the acting was wonderful, the story "
    "kept me guessing until the very end, and I would happily watch it again with friends."
)


def make_media(folder: Path) -> dict[str, Path]:
    import numpy as np

    from qamoe_core.data.media.audio import load_audio
    from tests.data.media import mediagen

    spoken = mediagen.speech_wav(folder / "spoken.wav", TRANSCRIPT)
    y = load_audio(spoken)
    reps = int(np.ceil(SECONDS * mediagen.SR / y.size))
    y = np.tile(y, reps)[: int(SECONDS * mediagen.SR)]  # exactly 10 s of speech
    wav = mediagen.write_wav(folder / "clip.wav", y)
    imgs = mediagen.frames([True] * int(SECONDS * 30), size=(640, 360))
    avi = mediagen.write_video_cv2(folder / "clip.avi", imgs, fps=30)
    mp4 = mediagen.write_video_av(folder / "clip.mp4", imgs, y, fps=30)
    return {"wav": wav, "avi": avi, "mp4": mp4}


def timeit(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Median wall and CPU seconds per call after one warm-up call.

    CPU time (all threads of this process) is reported beside wall time because a shared
    machine stretches wall time; for single-threaded extractors (dlib, librosa, openSMILE)
    1 / cpu_s is what an idle core would give.
    """
    t0 = time.perf_counter()
    fn()  # warm-up: lazy imports, numba, first-call allocations
    first = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {
        "clips_per_s": round(1.0 / wall, 3),
        "seconds_per_clip": round(wall, 4),
        "cpu_seconds_per_clip": round(cpu, 4),
        "realtime_factor": round(SECONDS / wall, 2),  # seconds of media per second of wall
        "first_call_s": round(first, 3),
    }


def bench_extractors(media: dict[str, Path], repeat: int) -> dict[str, Any]:
    import cv2
    import torch

    from qamoe_core.data.media.audio import LibrosaAudio, OpenSmileAudio, load_audio
    from qamoe_core.data.media.text import TextExtractor
    from qamoe_core.data.media.vision import HaarVision, LandmarkVision
    from qamoe_core.text.locate import default_text_model

    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    model = default_text_model()
    if model is not None:
        text = TextExtractor(model)
        out["text_model_load_s"] = round(time.perf_counter() - t0, 3)
        out["text"] = timeit(lambda: text(TRANSCRIPT), repeat) | {
            "tokens": int(text(TRANSCRIPT).shape[0])
        }
    y = load_audio(media["wav"])
    out["audio_decode_wav"] = timeit(lambda: load_audio(media["wav"]), repeat)
    out["audio_decode_mp4"] = timeit(lambda: load_audio(media["mp4"]), repeat)
    lib = LibrosaAudio()
    out["audio_librosa"] = timeit(lambda: lib(y), repeat) | {"frames": int(lib(y).shape[0])}
    try:
        smile = OpenSmileAudio()
        out["audio_opensmile"] = timeit(lambda: smile(y), repeat) | {
            "frames": int(smile(y).shape[0])
        }
    except Exception as exc:  # the optional extra may be absent
        out["audio_opensmile"] = {"skipped": str(exc)}
    for name, cls in (("vision_landmarks", LandmarkVision), ("vision_haar", HaarVision)):
        backend = cls(fps=10.0)
        frames, counts = backend(media["avi"], 10_000)
        out[name] = timeit(lambda b=backend: b(media["avi"], 10_000), repeat) | {
            "frames": int(frames.shape[0]),
            "frames_no_face": counts["frames_no_face"],
        }
    return out


def _cpu_with_children() -> float:
    own = time.process_time()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + kids.ru_utime + kids.ru_stime


def bench_pipeline(media: dict[str, Path], folder: Path, n_clips: int) -> dict[str, Any]:
    from qamoe_core.data.media import MediaConfig, extract_media

    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "split", "label", "text", "audio", "video"])
        for i in range(n_clips):
            split = "train" if i < n_clips - 2 else ("valid", "test")[i % 2]
            w.writerow([f"c{i}", split, 1.0, TRANSCRIPT, media["wav"], media["avi"]])
    out: dict[str, Any] = {}
    for workers in (1, 2):
        t0, c0 = time.perf_counter(), _cpu_with_children()
        s = extract_media(manifest, folder / f"w{workers}.h5", MediaConfig(), workers=workers)
        wall, cpu = time.perf_counter() - t0, _cpu_with_children() - c0
        out[f"pipeline_workers_{workers}"] = {
            "clips": n_clips,
            "wall_s": round(wall, 2),
            "clips_per_s": round(n_clips / wall, 3),
            "cpu_s": round(cpu, 2),  # this process + finished workers, start-up included
            "failed": s["failed_total"],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per extractor")
    ap.add_argument("--clips", type=int, default=6, help="clips for the pipeline runs (0: skip)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_media_") as tmp:
        folder = Path(tmp)
        media = make_media(folder)
        result: dict[str, Any] = {
            "benchmark": "media extractors, 10-second clips",
            "clip_seconds": SECONDS,
            "video": "640x360 MJPG at 30 fps, a face in every frame; described at 10 frames/s",
            "cores_used": 2,
            "machine": {
                "cpu_count": os.cpu_count(),
                "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
        }
        result["extractors"] = bench_extractors(media, args.repeat)
        if args.clips:
            result["pipeline"] = bench_pipeline(media, folder, args.clips)
        result["machine"]["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""Media made by the tests themselves: speech (or a tone), face videos, a manifest.

- Speech: Debian's espeak-ng when it is installed, else a voiced synthetic "utterance"
  (a harmonic tone with syllable-like amplitude bumps), written with the stdlib ``wave``.
- Faces: the astronaut photograph (Eileen Collins, public domain, NASA) that ships inside
  scikit-image, when installed; else a drawn face-like pattern that detectors may ignore.
- Video: OpenCV's VideoWriter (MJPG in .avi, no sound track), or PyAV (MPEG-4 + AAC in .mp4)
  when a sound track is wanted.
"""

from __future__ import annotations

import csv
import fractions
import hashlib
import shutil
import subprocess
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SR = 16_000


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def tone(seconds: float, f0: float = 140.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A voiced, speech-like signal: harmonics of ``f0`` with 4 Hz syllable bumps, (S,)."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    vib = f0 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))  # a little intonation
    phase = 2 * np.pi * np.cumsum(vib) / sr
    y = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = 0.5 * (1 - np.cos(2 * np.pi * 4 * t)) * (t < seconds - 0.1)
    return (0.2 * y * env + 0.002 * rng.standard_normal(t.size)).astype(np.float32)


def write_wav(path: Path, y: np.ndarray, sr: int = SR) -> Path:
    pcm = (np.clip(y, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


def speech_wav(path: Path, text: str, *, force_tone: bool = False) -> Path:
    """Speak ``text`` into a WAV (espeak-ng, 22.05 kHz) or write a tone standing in for it."""
    if have_espeak() and not force_tone:
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        return path
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:6], 16)
    seconds = 0.8 + 0.05 * len(text)
    return write_wav(path, tone(seconds, 110 + seed % 80, seed=seed))


def face_image() -> np.ndarray | None:
    """A real face (BGR uint8, about 200x190, the face ~95 px wide), or None."""
    try:
        from skimage import data
    except ImportError:
        return None
    rgb = data.astronaut()[20:230, 125:315]  # the head of the 512x512 photograph
    return np.ascontiguousarray(rgb[..., ::-1])


def drawn_face(side: int = 160) -> np.ndarray:
    """A face-like drawing: skin ellipse, eyes, brows, mouth (detectors may not fire)."""
    import cv2

    img = np.full((side, side, 3), 90, np.uint8)
    c = side // 2
    cv2.ellipse(img, (c, c), (side // 3, side // 2 - 8), 0, 0, 360, (150, 180, 220), -1)
    for dx in (-side // 7, side // 7):
        cv2.circle(img, (c + dx, c - side // 10), side // 18, (40, 40, 40), -1)
        cv2.line(img, (c + dx - 12, c - side // 5), (c + dx + 12, c - side // 5), (30, 30, 30), 3)
    cv2.ellipse(img, (c, c + side // 5), (side // 7, side // 18), 0, 0, 180, (40, 40, 120), 3)
    return img


def frames(
    face_mask: Sequence[bool], size: tuple[int, int] = (320, 240), face: np.ndarray | None = None
) -> list[np.ndarray]:
    """BGR frames (H, W, 3): a textured background, with ``face`` pasted where the mask says."""
    w, h = size
    face = (
        face if face is not None else (face_image() if face_image() is not None else drawn_face())
    )
    fh, fw = face.shape[:2]
    out = []
    for i, has_face in enumerate(face_mask):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (60 + (i * 7) % 40, 70, 80)
        img[::8] = 100  # horizontal lines: some texture, nothing face-like
        if has_face:
            x = (w - fw) // 2 + int(6 * np.sin(i / 3))  # a little head motion
            y = (h - fh) // 2
            img[y : y + fh, x : x + fw] = face
        out.append(img)
    return out


def write_video_cv2(path: Path, images: Sequence[np.ndarray], fps: float = 25.0) -> Path:
    """MJPG in .avi through OpenCV (no sound track)."""
    import cv2

    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for img in images:
        writer.write(img)
    writer.release()
    return path


def write_video_av(
    path: Path, images: Sequence[np.ndarray], audio: np.ndarray | None, fps: int = 25
) -> Path:
    """MPEG-4 video (+ AAC mono 16 kHz sound when ``audio`` is given) in .mp4 through PyAV."""
    import av

    h, w = images[0].shape[:2]
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        as_ = c.add_stream("aac", rate=SR) if audio is not None else None
        for img in images:
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if as_ is not None and audio is not None:
            for k in range(0, audio.size, 1024):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(audio[None, k : k + 1024]), format="flt", layout="mono"
                )
                frame.sample_rate, frame.pts = SR, k
                frame.time_base = fractions.Fraction(1, SR)
                for p in as_.encode(frame):
                    c.mux(p)
            for p in as_.encode():
                c.mux(p)
    return path


SENTENCES = [
    ("I really loved this movie, the acting was wonderful.", 2.5),
    ("This was the worst film I have seen in years.", -2.5),
    ("It was fine, nothing special.", 0.0),
    ("The story was great but the ending felt rushed.", 0.8),
    ("Terrible pacing and a boring plot.", -2.0),
    ("An absolute delight from start to finish.", 3.0),
]


SPLIT_CYCLE = ("train", "train", "train", "valid", "test")  # 60/20/20


def make_manifest(
    folder: Path,
    n: int,
    *,
    seconds: float = 1.2,
    fps: int = 10,
    audio_from_video_every: int = 0,
    face_every: int = 2,
) -> Path:
    """Write n clips (wav + MJPG video, faces in alternate frames) and a manifest.csv.

    Labels follow the sentence's sentiment, so a model can learn something from 20 clips.
    Every ``audio_from_video_every``-th clip has no wav: its audio comes from an .mp4 track.
    """
    folder.mkdir(parents=True, exist_ok=True)
    media = folder / "media"
    media.mkdir(exist_ok=True)
    n_frames = max(2, int(seconds * fps))
    rows = []
    for i in range(n):
        text, label = SENTENCES[i % len(SENTENCES)]
        split = SPLIT_CYCLE[i % len(SPLIT_CYCLE)]
        mask = [(k % face_every) == 0 for k in range(n_frames)]
        imgs = frames(mask)
        if audio_from_video_every and i % audio_from_video_every == 0:
            wav_path = media / f"clip{i}.wav"
            speech_wav(wav_path, text)
            y = _read_wav16k(wav_path)
            wav_path.unlink()
            write_video_av(media / f"clip{i}.mp4", imgs, y, fps=fps)
            rows.append([f"c{i:03d}", split, label, text, "", f"media/clip{i}.mp4"])
        else:
            speech_wav(media / f"clip{i}.wav", text)
            write_video_cv2(media / f"clip{i}.avi", imgs, fps=fps)
            rows.append(
                [f"c{i:03d}", split, label, text, f"media/clip{i}.wav", f"media/clip{i}.avi"]
            )
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "split", "label", "text", "audio", "video"])
        w.writerows(rows)
    return path


def _read_wav16k(path: Path) -> np.ndarray:
    from qamoe_core.data.media.audio import load_audio

    return load_audio(path)

"""Audio: decode any file (or a video's sound track) to mono 16 kHz, then frame-level features.

Two backends, both offline:

- ``librosa`` (default): 20 MFCCs with first and second deltas, pitch (YIN), a voicing flag
  and RMS energy, every 20 ms (50 frames/s). 63 dims.
- ``opensmile``: the 25 eGeMAPS v02 low-level descriptors (Eyben et al. 2016) every 10 ms
  (100 frames/s), from the PyPI package ``opensmile``.

Decoding: soundfile (libsndfile) for plain audio files; PyAV (FFmpeg libraries shipped in its
wheel, no system ffmpeg needed) for video containers and whatever libsndfile cannot read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.inputs import problem
from qamoe_core.data.media.deps import require
from qamoe_core.data.media.failures import ClipFailure

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # speech carries little above 8 kHz; every speech model uses 16 kHz
MIN_SECONDS = 0.1  # shorter than a syllable: nothing to describe, most likely a broken file
# Containers that libsndfile never reads: go straight to PyAV instead of failing first.
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".wmv", ".mpg", ".mpeg"}


def _decode_av(path: Path, sr: int, max_samples: int | None) -> np.ndarray:
    av = require("av", "Decoding audio from video files")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ClipFailure("audio", f"'{path.name}' has no audio track")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
            chunks: list[np.ndarray] = []
            n = 0
            for frame in container.decode(stream):
                for f in resampler.resample(frame):
                    chunks.append(f.to_ndarray().reshape(-1))
                    n += chunks[-1].size
                if max_samples is not None and n >= max_samples:
                    break  # an hour-long recording need not be decoded to keep 30 s
            else:
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except ClipFailure:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ClipFailure("audio", f"cannot decode '{path.name}': {exc}") from None
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def load_audio(path: Path, sr: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform in [-1, 1] at ``sr`` Hz, shape (S,).

    With ``max_seconds`` only the beginning is decoded (at least that long when available).

    Raises ClipFailure for a missing or unreadable file, a file without an audio track, or
    one shorter than ``MIN_SECONDS``.
    """
    why = problem(path)
    if why is not None:
        raise ClipFailure("audio", f"{why}: {path}")
    y: np.ndarray | None = None
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        sf = require("soundfile", "Audio extraction")
        try:
            info = sf.info(str(path))
            native_sr = int(info.samplerate)
            frames = -1 if max_seconds is None else int(max_seconds * native_sr) + 1
            data, _ = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)  # (S, C)
            y = data.mean(axis=1)
            if native_sr != sr:
                librosa = require("librosa", "Audio extraction")
                y = librosa.resample(y, orig_sr=native_sr, target_sr=sr, res_type="soxr_hq")
        except (RuntimeError, OSError, ValueError):  # soundfile.LibsndfileError is a RuntimeError
            y = None
    if y is None:
        y = _decode_av(path, sr, None if max_seconds is None else int(max_seconds * sr) + 1)
    if y.size < MIN_SECONDS * sr:
        raise ClipFailure(
            "audio", f"'{path.name}' holds {y.size / sr:.3f} s of audio (< {MIN_SECONDS} s)"
        )
    if not np.isfinite(y).all():
        raise ClipFailure("audio", f"'{path.name}' decodes to non-finite samples")
    return np.ascontiguousarray(y, dtype=np.float32)


class LibrosaAudio:
    """MFCC + deltas, pitch, voicing and energy: ``__call__(y) -> (T, 63)`` at 50 frames/s.

    Columns: mfcc_1..20, d_mfcc_1..20, dd_mfcc_1..20, log2_f0 (octaves relative to 100 Hz,
    0 when unvoiced), voiced (0/1), rms_db (dB re full scale). T = 1 + S // hop.
    """

    name = "librosa"
    n_mfcc = 20  # librosa's default; the first 13 carry most of the envelope, deltas the rest
    n_mels = 40  # 40 mel bands is the usual speech setting; 128 leaves empty bands at n_fft=512
    n_fft = 512  # 32 ms FFT, zero-padding the 25 ms window below
    win_length = 400  # 25 ms analysis window, the ASR standard
    hop_length = 320  # 20 ms hop: 50 frames/s, half the openSMILE rate, enough for prosody
    fmin_f0, fmax_f0 = 65.0, 400.0  # adult speech F0 (low male to high female voices)
    yin_frame = 1024  # 64 ms: YIN needs about two periods of fmin (2 / 65 Hz = 31 ms)
    voiced_db = 30.0  # a frame within 30 dB of the clip's loudest counts as voiced speech

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.librosa = require("librosa", "Audio extraction (librosa)")
        self.sr = sample_rate
        self.dim = 3 * self.n_mfcc + 3
        self.frame_rate_hz = self.sr / self.hop_length

    def __call__(self, y: np.ndarray) -> np.ndarray:
        lr = self.librosa
        mfcc = lr.feature.mfcc(
            y=y,
            sr=self.sr,
            n_mfcc=self.n_mfcc,
            n_fft=self.n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
        )  # (20, T)
        # mode="nearest" keeps deltas defined for clips shorter than the 9-frame window.
        d1 = lr.feature.delta(mfcc, order=1, mode="nearest")
        d2 = lr.feature.delta(mfcc, order=2, mode="nearest")
        f0 = lr.yin(
            y,
            fmin=self.fmin_f0,
            fmax=self.fmax_f0,
            sr=self.sr,
            frame_length=self.yin_frame,
            hop_length=self.hop_length,
        )  # (T,) Hz; YIN always answers, so voicing comes from energy below
        rms = lr.feature.rms(y=y, frame_length=self.n_fft, hop_length=self.hop_length)[0]
        rms_db = 20.0 * np.log10(np.maximum(rms, 1e-5))  # floor at -100 dBFS (digital silence)
        t = min(mfcc.shape[1], f0.shape[0], rms_db.shape[0])
        voiced = (rms_db[:t] > rms_db[:t].max() - self.voiced_db) & (rms_db[:t] > -60.0)
        log_f0 = np.where(voiced, np.log2(np.maximum(f0[:t], 1.0) / 100.0), 0.0)
        feats = np.concatenate(
            [mfcc[:, :t], d1[:, :t], d2[:, :t], log_f0[None], voiced[None], rms_db[None, :t]]
        )  # (63, T)
        return np.ascontiguousarray(feats.T, dtype=np.float32)  # (T, 63)

    def columns(self) -> list[str]:
        names = [f"mfcc_{i + 1}" for i in range(self.n_mfcc)]
        return (
            names
            + ["d_" + n for n in names]
            + ["dd_" + n for n in names]
            + [
                "log2_f0_re_100hz",
                "voiced",
                "rms_db",
            ]
        )

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "librosa",
            "version": str(self.librosa.__version__),
            "dim": self.dim,
            "frame_rate_hz": self.frame_rate_hz,
            "sample_rate_hz": self.sr,
            "window_ms": 1000 * self.win_length / self.sr,
            "hop_ms": 1000 * self.hop_length / self.sr,
            "pitch": f"YIN {self.fmin_f0:g}-{self.fmax_f0:g} Hz, voiced = within "
            f"{self.voiced_db:g} dB of the clip maximum",
            "columns": self.columns(),
        }


class OpenSmileAudio:
    """eGeMAPS v02 low-level descriptors: ``__call__(y) -> (T, 25)`` at 100 frames/s."""

    name = "opensmile"

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        opensmile = require("opensmile", "Audio extraction (opensmile)")
        self.opensmile = opensmile
        self.smile = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02,
            feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
        )
        self.sr = sample_rate
        self.dim = len(self.smile.feature_names)
        self.frame_rate_hz = 100.0  # eGeMAPS LLDs: 10 ms hop (Eyben et al. 2016)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        frame = self.smile.process_signal(y, self.sr)  # pandas DataFrame (T, 25)
        feats = frame.to_numpy(dtype=np.float32)
        if feats.shape[0] == 0:
            raise ClipFailure("audio", "openSMILE produced no frame (clip too short)")
        # Some descriptors are undefined in silence; openSMILE writes NaN there on some builds.
        return np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)

    def columns(self) -> list[str]:
        return [str(c) for c in self.smile.feature_names]

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "opensmile",
            "version": str(self.opensmile.__version__),
            "feature_set": "eGeMAPSv02 low-level descriptors",
            "dim": self.dim,
            "frame_rate_hz": self.frame_rate_hz,
            "sample_rate_hz": self.sr,
            "columns": self.columns(),
        }


AUDIO_BACKENDS = {"librosa": LibrosaAudio, "opensmile": OpenSmileAudio}

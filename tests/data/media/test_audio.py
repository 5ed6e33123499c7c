"""Audio decoding (files, video sound tracks) and the librosa / openSMILE descriptors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("librosa")
pytest.importorskip("soundfile")
pytest.importorskip("av")

from qamoe_core.data.media.audio import SAMPLE_RATE, LibrosaAudio, OpenSmileAudio, load_audio
from qamoe_core.data.media.failures import ClipFailure
from tests.data.media import mediagen


@pytest.fixture(scope="module")
def librosa_audio() -> LibrosaAudio:
    return LibrosaAudio()


def test_load_resamples_and_downmixes(tmp_path: Path) -> None:
    sr = 22_050
    t = np.arange(sr) / sr  # 1 s
    stereo = np.stack([np.sin(2 * np.pi * 200 * t), np.zeros_like(t)], axis=1) * 0.5
    import soundfile as sf

    sf.write(tmp_path / "s.flac", stereo, sr)
    y = load_audio(tmp_path / "s.flac")
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.size - SAMPLE_RATE) <= 2
    assert 0.2 < np.abs(y).max() < 0.3  # the two channels averaged


def test_sound_track_of_a_video(tmp_path: Path) -> None:
    y = mediagen.tone(1.5, 150.0)
    imgs = mediagen.frames([False] * 10, size=(64, 48))
    path = mediagen.write_video_av(tmp_path / "v.mp4", imgs, y, fps=10)
    got = load_audio(path)
    assert abs(got.size - y.size) < 0.1 * SAMPLE_RATE  # AAC adds a little padding
    assert np.abs(got).max() > 0.05
    head = load_audio(path, max_seconds=0.5)  # stops decoding early
    assert 0.5 * SAMPLE_RATE <= head.size < 0.7 * SAMPLE_RATE


def test_max_seconds_reads_only_the_beginning(tmp_path: Path) -> None:
    path = mediagen.write_wav(tmp_path / "long.wav", mediagen.tone(3.0))
    assert abs(load_audio(path, max_seconds=1.0).size - SAMPLE_RATE) <= 1
    assert load_audio(path, max_seconds=10.0).size == 3 * SAMPLE_RATE


def test_failures_are_clip_failures(tmp_path: Path) -> None:
    with pytest.raises(ClipFailure, match="file not found"):
        load_audio(tmp_path / "none.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF nothing else")
    with pytest.raises(ClipFailure, match="cannot decode"):
        load_audio(tmp_path / "junk.wav")
    silent_video = mediagen.write_video_cv2(tmp_path / "v.avi", mediagen.frames([False] * 4))
    with pytest.raises(ClipFailure, match="no audio track") as info:
        load_audio(silent_video)
    assert info.value.stage == "audio"
    mediagen.write_wav(tmp_path / "short.wav", np.zeros(100, np.float32))
    with pytest.raises(ClipFailure, match=r"< 0\.1 s"):
        load_audio(tmp_path / "short.wav")


def test_librosa_features_shape_rate_and_pitch(librosa_audio: LibrosaAudio) -> None:
    y = mediagen.tone(2.0, f0=200.0)
    x = librosa_audio(y)
    assert x.shape == (1 + y.size // 320, 63) and x.dtype == np.float32
    assert np.isfinite(x).all()
    assert librosa_audio.frame_rate_hz == 50.0 and librosa_audio.dim == 63
    cols = librosa_audio.columns()
    f0, voiced = x[:, cols.index("log2_f0_re_100hz")], x[:, cols.index("voiced")]
    assert 0.3 < voiced.mean() < 1.0  # syllable-like bumps: voiced and unvoiced frames
    # 200 Hz is one octave above the 100 Hz reference (vibrato is +-3 %).
    assert np.median(f0[voiced > 0]) == pytest.approx(1.0, abs=0.06)
    assert (f0[voiced == 0] == 0).all()


def test_librosa_on_silence_and_tiny_clips(librosa_audio: LibrosaAudio) -> None:
    x = librosa_audio(np.zeros(SAMPLE_RATE // 5, np.float32))  # 0.2 s of silence
    assert x.shape == (11, 63) and np.isfinite(x).all()
    cols = librosa_audio.columns()
    assert (x[:, cols.index("voiced")] == 0).all()  # digital silence is never voiced
    # The floor is 20*log10(1e-5) = -100 dBFS, computed in float32: -100.00001 with numpy 2.4,
    # -100.0 exactly with older versions. 1e-3 dB is far below any meaningful level difference.
    np.testing.assert_allclose(x[:, cols.index("rms_db")], -100.0, rtol=0, atol=1e-3)


def test_speech_differs_from_tone(tmp_path: Path, librosa_audio: LibrosaAudio) -> None:
    speech = load_audio(mediagen.speech_wav(tmp_path / "a.wav", "I loved it so much."))
    tone = load_audio(mediagen.speech_wav(tmp_path / "b.wav", "x", force_tone=True))
    a, b = librosa_audio(speech), librosa_audio(tone)
    assert not np.allclose(a[: len(b)].mean(0), b.mean(0), atol=1.0)


def test_opensmile_lld() -> None:
    pytest.importorskip("opensmile")
    smile = OpenSmileAudio()
    x = smile(mediagen.tone(1.0, 150.0))
    assert x.shape[1] == 25 == smile.dim and smile.frame_rate_hz == 100.0
    assert 90 <= x.shape[0] <= 101 and np.isfinite(x).all()
    assert "F0semitoneFrom27.5Hz_sma3nz" in smile.columns()

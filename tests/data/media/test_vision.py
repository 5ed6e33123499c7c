"""Frame sampling, face features, and frames without a face kept as zeros and counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")

from qamoe_core.data.media.failures import ClipFailure
from qamoe_core.data.media.vision import EXPRESSION_COLUMNS, HaarVision, LandmarkVision, iter_frames
from tests.data.media import mediagen

MASK = [True, True, False, True, False, False, True, False, True, True]  # 6 faces, 4 blank


@pytest.fixture(scope="module")
def face_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vision")
    return mediagen.write_video_cv2(folder / "faces.avi", mediagen.frames(MASK), fps=10)


@pytest.mark.parametrize(("native", "n_native", "want"), [(25, 50, 20), (5, 10, 20), (10, 7, 7)])
def test_frames_are_resampled_to_the_target_rate(
    tmp_path: Path, native: int, n_native: int, want: int
) -> None:
    imgs = [np.full((16, 16, 3), (5 * i) % 256, np.uint8) for i in range(n_native)]
    path = mediagen.write_video_cv2(tmp_path / "v.avi", imgs, fps=native)
    got = list(iter_frames(path, 10.0))
    assert sum(r for _, r in got) == want
    if native < 10:  # each decoded frame stands for two target frames
        assert {r for _, r in got} == {2}


def test_unreadable_video_is_a_clip_failure(tmp_path: Path) -> None:
    (tmp_path / "x.avi").write_bytes(b"not a video at all")
    with pytest.raises(ClipFailure) as info:
        list(iter_frames(tmp_path / "x.avi", 10.0))
    assert info.value.stage == "vision"
    with pytest.raises(ClipFailure, match="file not found"):
        list(iter_frames(tmp_path / "missing.avi", 10.0))


def _check_counts(x: np.ndarray, counts: dict[str, int], real_face: bool) -> None:
    blank = [i for i, m in enumerate(MASK) if not m]
    assert counts["frames"] == len(MASK) == x.shape[0]
    assert (x[blank] == 0).all()  # kept, as zeros, including the face column
    assert counts["frames_no_face"] == int((x[:, 0] == 0).sum())
    if real_face:  # the photograph is found in (almost) every frame that shows it
        assert counts["frames_no_face"] <= len(blank) + 1
        assert x[[i for i, m in enumerate(MASK) if m], 0].sum() >= MASK.count(True) - 1
    else:  # a drawn pattern may or may not fire: at least every blank frame is counted
        assert counts["frames_no_face"] >= len(blank)


def test_landmarks_on_a_real_face(face_video: Path) -> None:
    pytest.importorskip("dlib")
    backend = LandmarkVision(fps=10.0)
    x, counts = backend(face_video, max_frames=100)
    assert x.shape[1] == backend.dim == 148 and x.dtype == np.float32
    real = mediagen.face_image() is not None
    _check_counts(x, counts, real)
    if not real:
        pytest.skip("scikit-image (astronaut photograph) not installed")
    row = x[x[:, 0] == 1][0]
    lm = row[5:141].reshape(68, 2)  # relative to the box: centre 0, half-size 0.5
    assert (np.abs(lm) < 1.0).all()
    eyes_y, mouth_y, chin_y = lm[36:48, 1].mean(), lm[48:68, 1].mean(), lm[8, 1]
    assert eyes_y < mouth_y < chin_y  # image y grows downwards
    assert lm[36:42, 0].mean() < lm[42:48, 0].mean()  # subject's right eye on image left
    expr = dict(zip(EXPRESSION_COLUMNS, row[141:], strict=True))
    assert 0.1 < expr["eye_open_left"] < 0.6 and abs(expr["head_roll_rad"]) < 0.5
    cx, w = row[1], row[3]
    assert 0.3 < cx < 0.7 and 0.2 < w < 0.6


def test_haar_backend(face_video: Path) -> None:
    backend = HaarVision(fps=10.0)
    x, counts = backend(face_video, max_frames=100)
    assert x.shape == (len(MASK), 293)
    _check_counts(x, counts, mediagen.face_image() is not None)
    faces = x[x[:, 0] == 1]
    if len(faces):
        thumb = faces[0, 5:149]
        assert thumb.mean() == pytest.approx(0.0, abs=1e-3)  # standardised per crop


def test_max_frames_cuts(face_video: Path) -> None:
    x, counts = HaarVision(fps=20.0)(face_video, max_frames=7)  # 20 target frames available
    assert x.shape[0] == counts["frames"] == 7

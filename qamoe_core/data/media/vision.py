"""Vision: per-frame face features at a fixed frame rate, offline, from PyPI packages only.

Frames are sampled at ``fps`` (default 10/s): target frame j shows what the video shows at
time j / fps (the latest decoded frame), so every clip has the same rate whatever its native
one. In each frame the LARGEST face is described (the speaker in interview-style videos).
A frame without a face is a row of zeros, including its ``face`` column (column 0), which is
therefore the mask; such frames are counted, never dropped.

Two backends:

- ``landmarks`` (default, 148 dims): dlib's HOG + linear-SVM frontal face detector (built
  into dlib) and dlib's 68-point shape predictor (iBUG 300-W layout) from the PyPI package
  ``face-recognition-models``. Columns: face, box (cx, cy, w, h as fractions of the frame),
  68 (x, y) landmarks relative to the box (centre 0, half-size 0.5), then seven expression
  geometries: eye openness left/right, mouth openness, mouth width, brow raise left/right
  (distances over the inter-ocular distance) and head roll (radians).
- ``haar`` (293 dims, needs OpenCV only): OpenCV's bundled frontal-face Haar cascade
  (Viola-Jones), then appearance features of the face crop: face, box (4), a 12x12
  grayscale thumbnail standardised per crop (144) and a 48x48 HOG descriptor (144). No
  landmark model is involved in this backend.

Licence note: dlib's 68-point model was trained on iBUG 300-W, whose terms exclude
commercial use; the detector and the code are Boost-licensed.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.errors import InputError
from qamoe_core.base.inputs import problem
from qamoe_core.data.media.deps import install_hint, require
from qamoe_core.data.media.failures import ClipFailure

log = logging.getLogger(__name__)

DEFAULT_FPS = 10.0
FALLBACK_FPS = 25.0  # when a container does not state its rate (PAL video's rate)
LANDMARK_PACKAGE = "face_recognition_models"
LANDMARK_FILE = "shape_predictor_68_face_landmarks.dat"

# 68-point (iBUG 300-W) indices, 0-based.
_R_EYE, _L_EYE = slice(36, 42), slice(42, 48)
_R_BROW, _L_BROW = slice(17, 22), slice(22, 27)


def landmark_model_path() -> Path:
    """dlib's 68-point predictor file inside the installed face-recognition-models package."""
    spec = importlib.util.find_spec(LANDMARK_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "models" / LANDMARK_FILE
        if path.is_file():
            return path
    raise InputError(
        "The landmark backend needs the Python package 'face-recognition-models' "
        f"(it ships {LANDMARK_FILE}), which is not installed.",
        hint=install_hint() + ", or choose --vision haar (OpenCV only).",
    )


def iter_frames(path: Path, fps: float) -> Iterator[tuple[np.ndarray, int]]:
    """Decode ``path`` and yield (BGR frame (H, W, 3) uint8, repeat) at ``fps`` frames/s.

    ``repeat`` is how many target frames this decoded frame stands for (0 frames are not
    yielded; more than 1 when the video's own rate is below ``fps``).
    """
    cv2 = require("cv2", "Video decoding")
    why = problem(path)
    if why is not None:
        raise ClipFailure("vision", f"{why}: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ClipFailure("vision", f"cannot open '{path.name}' as a video")
    native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not math.isfinite(native) or not 0.0 < native <= 1000.0:
        log.warning("%s states no frame rate; assuming %g fps", path.name, FALLBACK_FPS)
        native = FALLBACK_FPS
    k = j = 0  # decoded frame index, target frame index
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            # Decoded frame k is on screen during [k, k+1) / native; emit every target time
            # j / fps inside it (integer cross-multiplication avoids float drift).
            repeat = 0
            while j * native < (k + 1) * fps:
                j += 1
                repeat += 1
            if repeat:
                yield frame, repeat
            k += 1
    finally:
        cap.release()
    if k == 0:
        raise ClipFailure("vision", f"no frame could be decoded from '{path.name}'")


class _FaceBackend:
    """Shared frame loop: sampling, the largest face, zeros and counts for missing faces."""

    name = ""
    dim = 0

    def __init__(self, fps: float = DEFAULT_FPS, detect_max_side: int = 480) -> None:
        self.cv2 = require("cv2", "Vision extraction")
        self.fps = fps
        # Detect on frames downscaled to <= 480 px: dlib's detector finds faces from 80 px,
        # i.e. a face a sixth of the frame wide; a speaker in an interview is bigger.
        self.detect_max_side = detect_max_side
        self.frame_rate_hz = float(fps)

    def _faces(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        raise NotImplementedError

    def _describe_face(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        raise NotImplementedError

    def frame(self, bgr: np.ndarray) -> tuple[np.ndarray, int]:
        """Features (D,) of one frame and the number of faces found in it."""
        cv2 = self.cv2
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
        h, w = gray.shape
        scale = min(1.0, self.detect_max_side / max(h, w))
        if scale < 1.0:
            gray = cv2.resize(
                gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
            )
        faces = self._faces(gray)
        out = np.zeros(self.dim, np.float32)
        if not faces:
            return out, 0
        x, y, bw, bh = max(faces, key=lambda b: b[2] * b[3])
        gh, gw = gray.shape
        out[0] = 1.0
        out[1:5] = ((x + bw / 2) / gw, (y + bh / 2) / gh, bw / gw, bh / gh)
        out[5:] = self._describe_face(gray, (x, y, bw, bh))
        return out, len(faces)

    def __call__(self, path: Path, max_frames: int) -> tuple[np.ndarray, dict[str, int]]:
        """(T, D) features for a video file, plus counts: frames, frames_no_face, ..."""
        rows: list[np.ndarray] = []
        no_face = multi = 0
        for bgr, repeat in iter_frames(path, self.fps):
            feats, n_faces = self.frame(bgr)
            repeat = min(repeat, max_frames - len(rows))
            rows.extend([feats] * repeat)
            no_face += repeat * (n_faces == 0)
            multi += repeat * (n_faces > 1)
            if len(rows) >= max_frames:
                break
        counts = {"frames": len(rows), "frames_no_face": no_face, "frames_multi_face": multi}
        return np.stack(rows).astype(np.float32), counts  # (T, D)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "dim": self.dim,
            "frame_rate_hz": self.frame_rate_hz,
            "face_column": 0,
            "no_face": "row of zeros (face column 0), counted in vision_frames_no_face",
            "largest_face_only": True,
            "detect_max_side_px": self.detect_max_side,
        }


class LandmarkVision(_FaceBackend):
    """dlib HOG face detector + 68-point landmarks + expression geometry (148 dims)."""

    name = "landmarks"
    dim = 1 + 4 + 68 * 2 + 7

    def __init__(self, fps: float = DEFAULT_FPS, detect_max_side: int = 480) -> None:
        super().__init__(fps, detect_max_side)
        dlib = require("dlib", "The landmark vision backend")
        model = landmark_model_path()
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(model))
        self._dlib = dlib
        self.model = model

    def _faces(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        rects = self.detector(gray, 0)  # no upsampling: 4x cheaper, faces >= 80 px
        return [(r.left(), r.top(), r.width(), r.height()) for r in rects]

    def _describe_face(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        x, y, bw, bh = box
        shape = self.predictor(gray, self._dlib.rectangle(x, y, x + bw, y + bh))
        pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)  # (68, 2) px
        rel = (pts - (x + bw / 2, y + bh / 2)) / (bw, bh)  # (68, 2), box centre 0
        return np.concatenate([rel.reshape(-1), _expression(pts)]).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "detector": "dlib HOG + linear SVM frontal face detector",
            "landmarks": f"dlib 68-point shape predictor ({self.model.name}, iBUG 300-W)",
            "columns": ["face", "cx", "cy", "w", "h"]
            + [f"lm{i}_{a}" for i in range(68) for a in ("x", "y")]
            + list(EXPRESSION_COLUMNS),
        }


EXPRESSION_COLUMNS = (
    "eye_open_right",
    "eye_open_left",
    "mouth_open",
    "mouth_width",
    "brow_raise_right",
    "brow_raise_left",
    "head_roll_rad",
)


def _expression(pts: np.ndarray) -> np.ndarray:
    """Seven scale-free expression geometries from 68 landmarks (68, 2) in pixels."""

    def dist(a: int, b: int) -> float:
        return float(np.linalg.norm(pts[a] - pts[b]))

    def eye_open(i: int) -> float:  # eye aspect ratio (Soukupova and Cech 2016)
        return (dist(i + 1, i + 5) + dist(i + 2, i + 4)) / (2.0 * max(dist(i, i + 3), 1e-6))

    r_eye, l_eye = pts[_R_EYE].mean(0), pts[_L_EYE].mean(0)
    iod = max(float(np.linalg.norm(l_eye - r_eye)), 1e-6)  # inter-ocular distance
    return np.array(
        [
            eye_open(36),
            eye_open(42),
            dist(62, 66) / max(dist(60, 64), 1e-6),  # inner-lip gap over inner-lip width
            dist(48, 54) / iod,  # mouth corners: widens in a smile
            (r_eye[1] - pts[_R_BROW, 1].mean()) / iod,  # image y grows downwards
            (l_eye[1] - pts[_L_BROW, 1].mean()) / iod,
            math.atan2(l_eye[1] - r_eye[1], l_eye[0] - r_eye[0]),
        ]
    )


class HaarVision(_FaceBackend):
    """OpenCV Haar cascade + thumbnail + HOG of the face crop (293 dims, no landmarks)."""

    name = "haar"
    thumb = 12  # 12x12 = 144 values: coarse shading (mouth, brows) without identity detail
    hog_side = 48
    dim = 1 + 4 + thumb * thumb + 144

    def __init__(self, fps: float = DEFAULT_FPS, detect_max_side: int = 480) -> None:
        super().__init__(fps, detect_max_side)
        cv2 = self.cv2
        cascades = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = Path(cascades or "") / "haarcascade_frontalface_default.xml"
        cascade = cv2.CascadeClassifier(str(path)) if path.is_file() else None
        if cascade is None or cascade.empty():
            raise InputError(
                "OpenCV's bundled Haar cascades are missing (opencv-python-headless 5 "
                "dropped them).",
                hint='pip install "opencv-python-headless<5", or choose --vision landmarks.',
            )
        self.cascade = cascade
        # 48x48 window, 24 px blocks of 2x2 12 px cells, 9 orientation bins: 4*4*9 = 144.
        self.hog = cv2.HOGDescriptor((48, 48), (24, 24), (24, 24), (12, 12), 9)

    def _faces(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        # Steps of 15 % in scale and faces from an eighth of the frame's short side: about
        # twice as fast as OpenCV's 10 % default, and a speaker's face is rarely smaller.
        side = max(40, min(gray.shape) // 8)
        found = self.cascade.detectMultiScale(
            gray, scaleFactor=1.15, minNeighbors=5, minSize=(side, side)
        )
        return [tuple(int(v) for v in box) for box in found]  # type: ignore[misc]

    def _describe_face(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        cv2 = self.cv2
        x, y, bw, bh = box
        crop = gray[y : y + bh, x : x + bw]
        small = cv2.resize(crop, (self.thumb, self.thumb), interpolation=cv2.INTER_AREA)
        small = small.astype(np.float32)
        small = (small - small.mean()) / (small.std() + 1e-3)  # lighting-invariant
        hog = self.hog.compute(cv2.resize(crop, (self.hog_side, self.hog_side)))
        return np.concatenate([small.reshape(-1), np.asarray(hog).reshape(-1)])

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "detector": "OpenCV Haar cascade haarcascade_frontalface_default.xml",
            "features": "12x12 standardised grayscale thumbnail + 48x48 HOG (9 bins)",
            "landmarks": None,
            "columns": ["face", "cx", "cy", "w", "h"]
            + [f"thumb_{i}" for i in range(self.thumb * self.thumb)]
            + [f"hog_{i}" for i in range(144)],
        }


VISION_BACKENDS: dict[str, type[_FaceBackend]] = {"landmarks": LandmarkVision, "haar": HaarVision}

"""Optional dependencies of the media extractors, imported only when a run needs them.

The heavy packages (OpenCV, librosa, transformers, dlib, PyAV, openSMILE) live in the
``media`` extra so that ``pip install qamoe`` stays small. A missing one becomes an
:class:`~qamoe_core.base.errors.InputError` that names the extra to install, never a bare
``ModuleNotFoundError`` from deep inside a worker process.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from qamoe_core.base.errors import InputError

MEDIA_EXTRA = "media"
OPENSMILE_EXTRA = "media-opensmile"

# import name -> (distribution on PyPI, extra that brings it)
PACKAGES: dict[str, tuple[str, str]] = {
    "cv2": ("opencv-python-headless", MEDIA_EXTRA),
    "librosa": ("librosa", MEDIA_EXTRA),
    "soundfile": ("soundfile", MEDIA_EXTRA),
    "av": ("av", MEDIA_EXTRA),
    "transformers": ("transformers", MEDIA_EXTRA),
    "dlib": ("dlib-bin", MEDIA_EXTRA),
    "opensmile": ("opensmile", OPENSMILE_EXTRA),
}


def install_hint(extra: str = MEDIA_EXTRA) -> str:
    return f'Install the optional extra: pip install "qamoe[{extra}]"'


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an InputError naming the package and the extra to install.

    ``purpose`` completes the sentence "<purpose> needs ...", e.g. "Audio extraction".
    """
    dist, extra = PACKAGES.get(module, (module, MEDIA_EXTRA))
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # A package that is present but broken (e.g. a missing system library) says why.
        detail = "" if isinstance(exc, ModuleNotFoundError) else f" ({exc})"
        raise InputError(
            f"{purpose} needs the Python package '{dist}', which could not be imported{detail}.",
            hint=install_hint(extra),
        ) from None

"""Feature extraction from raw media (``qamoe extract media``), offline, from PyPI packages.

A manifest CSV lists clips (id, split, label, transcript, audio and/or video paths); each clip
becomes token-level text states, frame-level audio descriptors and per-frame face features,
written into the same HDF5 schema as every other import. Heavy dependencies are imported only
when needed and come with the ``media`` extra; a missing one is an InputError naming it.

Public API::

    extract_media(manifest, out, MediaConfig(...), workers=1, shard=(0, 1), resume=False,
                  merge=False, force=False, progress=None) -> dict   # the summary
    read_manifest(path, scheme="mosi") -> Manifest
    parse_shard("i/n") -> (i, n)
"""

from qamoe_core.data.media.config import MediaConfig, parse_shard
from qamoe_core.data.media.manifest import ClipSpec, Manifest, read_manifest
from qamoe_core.data.media.pipeline import extract_media

__all__ = ["ClipSpec", "Manifest", "MediaConfig", "extract_media", "parse_shard", "read_manifest"]

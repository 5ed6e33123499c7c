"""Per-clip failures: recorded in the failures CSV, never fatal to the run."""

from __future__ import annotations


class ClipFailure(Exception):
    """One clip cannot be extracted (unreadable file, no audio track, no frames, ...).

    ``stage`` is the modality or step that failed (``text``, ``audio``, ``vision``, ``save``);
    the message is one line meant for the failures CSV.
    """

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason

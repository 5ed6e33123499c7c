"""The media manifest: one CSV row per clip, checked before any extraction starts.

Columns (a header row is required; order is free, extra columns are ignored):

=========  ========  ==================================================================
column     required  meaning
=========  ========  ==================================================================
id         yes       unique clip id (kept in the HDF5 ``ids``)
split      yes       ``train``, ``valid`` or ``test``
label      yes       sentiment score: [-3, 3] (scheme mosi), [-1, 1] (sims), 0/1 (binary)
text       yes       the transcript (may be empty only when text is not extracted)
audio      no        path to an audio file (wav, flac, ogg, mp3, or any container PyAV reads)
video      no        path to a video file; its sound track serves as audio when ``audio``
                     is empty
=========  ========  ==================================================================

Paths are relative to the manifest's folder (absolute paths are kept). Structural problems
(missing column, unknown split, bad label, duplicate id) stop the run with one error listing
the first few bad lines, because they are typos worth fixing before hours of extraction; a
missing or unreadable media file is a per-clip failure recorded later, and the run goes on.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from qamoe_core.base.errors import DataFormatError, UsageError
from qamoe_core.base.inputs import check_file
from qamoe_core.base.names import SPLITS

REQUIRED_COLUMNS = ("id", "split", "label", "text")
OPTIONAL_COLUMNS = ("audio", "video")

# metric scheme -> (task, label range); the same pairs the importers store.
SCHEMES: dict[str, tuple[str, tuple[float, float]]] = {
    "mosi": ("regression", (-3.0, 3.0)),
    "sims": ("regression", (-1.0, 1.0)),
    "binary": ("binary", (0.0, 1.0)),
}
MAX_REPORTED = 5  # bad lines quoted in one error; more would drown the message


@dataclass(frozen=True)
class ClipSpec:
    """One manifest row, with paths resolved against the manifest's folder."""

    id: str
    split: str
    label: float
    text: str
    audio: Path | None
    video: Path | None
    line: int  # 1-based line in the CSV (the header is line 1), for messages


@dataclass(frozen=True)
class Manifest:
    path: Path
    clips: tuple[ClipSpec, ...]
    columns: tuple[str, ...]

    @property
    def has_audio_source(self) -> bool:
        return "audio" in self.columns or "video" in self.columns

    @property
    def has_video(self) -> bool:
        return "video" in self.columns


def _resolve(base: Path, value: str) -> Path | None:
    value = value.strip()
    if not value:
        return None
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base / p


def _parse_label(raw: str, scheme: str) -> tuple[float | None, str | None]:
    """Return (label, None) or (None, reason)."""
    try:
        value = float(raw)
    except ValueError:
        return None, f"label {raw!r} is not a number"
    if not math.isfinite(value):
        return None, f"label {raw!r} is not finite"
    task, (lo, hi) = SCHEMES[scheme]
    if task == "binary" and value not in (0.0, 1.0):
        return None, f"label {raw!r} must be 0 or 1 for the binary scheme"
    if not lo <= value <= hi:
        return None, f"label {value:g} is outside [{lo:g}, {hi:g}] (scheme {scheme})"
    return value, None


def read_manifest(path: str | os.PathLike[str], scheme: str = "mosi") -> Manifest:
    """Read and check a manifest CSV; raise DataFormatError listing the first bad lines."""
    path = Path(path)
    if scheme not in SCHEMES:
        raise UsageError(
            f"The 'scheme' parameter must be one of {', '.join(SCHEMES)}. Got {scheme!r} instead.",
            hint="The scheme fixes the label range and the metrics (mosi: [-3, 3]).",
        )
    rows = _read_rows(path)
    header = [h.strip().lower() for h in rows[0]]
    _check_header(path, header)
    col = {
        name: header.index(name) for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if name in header
    }
    clips, problems = _RowChecker(col, len(header), path.parent, scheme).check(rows[1:])
    if problems:
        more = len(problems) - MAX_REPORTED
        listed = "; ".join(problems[:MAX_REPORTED]) + (f"; and {more} more" if more > 0 else "")
        raise DataFormatError(
            f"The manifest '{path}' has {len(problems)} bad row(s): {listed}.",
            hint=f"Splits are {', '.join(SPLITS)}; labels follow the scheme ({scheme}).",
        )
    if not clips:
        raise DataFormatError(
            f"The manifest '{path}' has a header but no clip rows.",
            hint="Add one row per clip below the header.",
        )
    return Manifest(path=path, clips=tuple(clips), columns=tuple(header))


def _read_rows(path: Path) -> list[list[str]]:
    """The CSV's rows, header first; an error if the file is missing, unreadable or empty."""
    check_file(path, "manifest", "Give a CSV with columns id, split, label, text, audio/video.")
    try:
        # utf-8-sig: spreadsheets often save a byte-order mark that would glue onto "id".
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(
            f"'{path}' is not a readable UTF-8 CSV file ({exc}).",
            hint="Save the manifest as CSV (UTF-8), one row per clip.",
        ) from None
    if not rows:
        raise DataFormatError(
            f"The manifest '{path}' is empty (no header row).",
            hint="Give a CSV with columns id, split, label, text and audio and/or video.",
        )
    return rows


def _check_header(path: Path, header: list[str]) -> None:
    """Every required column, and at least one media column, must be named."""
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataFormatError(
            f"The manifest '{path}' lacks the column(s) {', '.join(missing)} "
            f"(found: {', '.join(header) or 'none'}).",
            hint="Required: id, split, label, text; optional: audio, video (paths).",
        )
    if not any(c in header for c in OPTIONAL_COLUMNS):
        raise DataFormatError(
            f"The manifest '{path}' has neither an 'audio' nor a 'video' column.",
            hint="Add a column of media paths; for text-only data use another importer.",
        )


@dataclass
class _RowChecker:
    """Turns the clip rows into ClipSpecs, collecting one message per problem found."""

    col: dict[str, int]  # column name -> index, for the columns the header has
    width: int  # the header's length; shorter rows are padded to it
    base: Path  # the manifest's folder, for relative media paths
    scheme: str
    seen: dict[str, int] = field(default_factory=dict)  # clip id -> its line

    def check(self, rows: list[list[str]]) -> tuple[list[ClipSpec], list[str]]:
        """(clips, problems); once a problem is found, later rows are only checked."""
        clips: list[ClipSpec] = []
        problems: list[str] = []
        for line, row in enumerate(rows, start=2):
            if not any(cell.strip() for cell in row):
                continue  # blank lines at the end of hand-edited files
            if len(row) < self.width:
                row = row + [""] * (self.width - len(row))
            clip = self._clip(line, row, problems)
            if clip is not None:
                clips.append(clip)
        return clips, problems

    def _cell(self, row: list[str], name: str) -> str:
        return row[self.col[name]].strip() if name in self.col else ""

    def _clip(self, line: int, row: list[str], problems: list[str]) -> ClipSpec | None:
        """The row's clip; None once any row (this one or an earlier) had a problem.

        This row's problems are appended to ``problems``."""
        clip_id, split = self._cell(row, "id"), self._cell(row, "split").lower()
        label, why = _parse_label(self._cell(row, "label"), self.scheme)
        if not clip_id:
            problems.append(f"line {line}: empty id")
        elif clip_id in self.seen:
            problems.append(f"line {line}: id {clip_id!r} repeats line {self.seen[clip_id]}")
        else:
            self.seen[clip_id] = line
        if split not in SPLITS:
            problems.append(
                f"line {line}: split {self._cell(row, 'split')!r} is not one of {', '.join(SPLITS)}"
            )
        if why is not None:
            problems.append(f"line {line}: {why}")
        if problems:
            return None
        assert label is not None
        return ClipSpec(
            id=clip_id,
            split=split,
            label=label,
            text=row[self.col["text"]],
            audio=_resolve(self.base, self._cell(row, "audio")),
            video=_resolve(self.base, self._cell(row, "video")),
            line=line,
        )

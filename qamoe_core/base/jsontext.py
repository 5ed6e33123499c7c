"""JSON text read from files: :func:`loads` is ``json.loads``, except that a document nested
deeper than Python's parser can recurse (``[[[[…]]]]``, 100,000 levels in a 200 KB
config.json or HDF5 attribute) is a ``json.JSONDecodeError`` like any other malformed JSON,
which every reader already turns into its one-line error, instead of a RecursionError that
no reader expects. Imports nothing of qamoe."""

from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes | bytearray, **kwargs: Any) -> Any:
    """``json.loads(text, **kwargs)``; too deep a document raises ``json.JSONDecodeError``."""
    try:
        return json.loads(text, **kwargs)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to parse", "", 0) from None

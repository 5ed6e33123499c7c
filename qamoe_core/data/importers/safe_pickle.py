"""A restricted unpickler: numpy arrays, plain containers and (optionally) torch tensors only.

A pickle is a small program: every global it names is imported and may be called, so
``pickle.load`` on a downloaded file can run anything (``os.system``, ``builtins.eval`` ...).
The MMSA feature files are pickles, so we load them through :class:`RestrictedUnpickler`,
whose ``find_class`` admits a short allow-list and refuses every other global before it is
imported.

What is admitted, and why it cannot run code:

- numpy: ``ndarray``, ``dtype``, and the three module-level rebuild helpers numpy's own
  ``__reduce__`` emits (``_reconstruct``, ``scalar``, ``_frombuffer``), under both the numpy 1
  (``numpy.core``) and numpy 2 (``numpy._core``) names. They only allocate arrays; ``_reconstruct``
  takes a class argument, but that class itself must pass this allow-list (only ``ndarray``
  does). Object arrays hold objects that were unpickled through this same filter.
- builtins without side effects: ``bytes``, ``bytearray``, ``set``, ``frozenset``, ``complex``,
  ``collections.OrderedDict``, and ``_codecs.encode`` limited to latin-1 (how protocol-2
  pickles spell ``bytes``).
- torch tensors, only with ``allow_torch``: a plain ``pickle.dumps(tensor)`` emits
  ``torch._utils._rebuild_tensor_v2(storage, ...)`` where the storage comes from
  ``torch.storage._load_from_bytes(blob)``, and the real ``_load_from_bytes`` runs torch's
  loader with its restrictions switched off, i.e. a second, unrestricted unpickler. We substitute
  a version that loads the blob with ``weights_only=True`` (torch's own restricted unpickler),
  and wrap ``_rebuild_tensor_v2`` to accept only a real storage and no backward hooks.
  ``torch.Size`` (a tuple) comes with it. Other torch globals are refused.

Everything else raises :class:`~qamoe_core.base.errors.DataFormatError` naming the global (also when
torch's unpickler refuses one inside a storage blob); any other failure becomes one line, "not a
readable pickle", with only the first line of the underlying message.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import os
import pickle
import re
from pathlib import Path
from typing import IO, Any

import numpy as np

from qamoe_core.base.errors import DataFormatError, InputError
from qamoe_core.base.inputs import open_regular

_REFUSED_HINT = (
    "Only numpy arrays, torch tensors and plain containers (dict, list, tuple, str, numbers) are "
    "admitted. If you trust the file, re-save its arrays as a plain dict of numpy arrays."
)


def _python3_name(module: str, name: str) -> str:
    """Protocol 0-2 pickles spell globals the Python-2 way (``__builtin__.eval``, ``commands``
    for ``subprocess``); fold them onto Python-3 names as pickle's own ``fix_imports`` does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to what pickle protocol 2 uses it for (bytes as latin-1)."""
    if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode is only admitted for latin-1, not {encoding}")
    return codecs.encode(obj, "latin1", errors)


def _numpy_globals() -> dict[str, Any]:
    # Take the helpers from numpy's own reducers so the names work on numpy 1 and 2 alike.
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[f"{core}.multiarray._reconstruct"] = reconstruct
        allowed[f"{core}.multiarray.scalar"] = scalar
        allowed[f"{core}.numeric._frombuffer"] = frombuffer
    return allowed


_BASE_GLOBALS: dict[str, Any] = {
    **_numpy_globals(),
    "builtins.bytes": bytes,
    "builtins.bytearray": bytearray,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.complex": complex,
    "_codecs.encode": _latin1_encode,
    "collections.OrderedDict": collections.OrderedDict,
}


def _first_line(message: str) -> str:
    """The first non-blank line of a foreign exception's message (some run to paragraphs)."""
    return next((line.strip() for line in message.splitlines() if line.strip()), "")


def _torch_globals() -> dict[str, Any]:
    import torch  # imported only when a pickle actually holds tensors

    inside = "a torch storage blob"

    def load_storage_from_bytes(blob: bytes) -> Any:
        if not isinstance(blob, bytes | bytearray):
            raise pickle.UnpicklingError("a torch storage must be stored as bytes")
        try:
            storage = torch.load(io.BytesIO(blob), weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch explains its refusal in a paragraph; keep the global it names, or one line
            message = str(exc)
            refused = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", message)
            if refused:  # torch drops the "builtins." prefix; put it back
                name = refused.group(1)
                raise RefusedGlobal(name if "." in name else f"builtins.{name}", inside) from None
            detail = message.rpartition("WeightsUnpickler error:")[2]
            raise pickle.UnpicklingError(f"{inside}: {_first_line(detail)}") from None
        if not isinstance(storage, torch.storage.TypedStorage | torch.storage.UntypedStorage):
            raise pickle.UnpicklingError(f"expected a torch storage, got {type(storage).__name__}")
        return storage

    def rebuild_tensor(
        storage: Any,
        offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
        requires_grad: bool,
        hooks: Any,
        *rest: Any,
    ) -> torch.Tensor:
        if not isinstance(storage, torch.storage.TypedStorage | torch.storage.UntypedStorage):
            raise pickle.UnpicklingError("a torch tensor must be rebuilt from a storage")
        if hooks:  # hooks are callables; a data file has no business carrying any
            raise pickle.UnpicklingError("a torch tensor with backward hooks is not admitted")
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, hooks, *rest)

    return {
        "torch._utils._rebuild_tensor_v2": rebuild_tensor,
        "torch.storage._load_from_bytes": load_storage_from_bytes,
        "torch.Size": torch.Size,
    }


class RefusedGlobal(pickle.UnpicklingError):
    """Raised inside the unpickler; :func:`safe_load` turns it into a DataFormatError."""

    def __init__(self, name: str, inside: str = "", *, torch_disabled: bool = False) -> None:
        super().__init__(name)
        self.name = name
        self.inside = inside  # e.g. "a torch storage blob": refused by torch's own unpickler
        self.torch_disabled = torch_disabled


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only the allow-list above."""

    def __init__(self, file: IO[bytes], *, allow_torch: bool = True) -> None:
        # latin1 lets numpy arrays pickled under Python 2 load; Python-3 pickles are unaffected.
        super().__init__(file, encoding="latin1")
        self.allow_torch = allow_torch
        self._allowed = dict(_BASE_GLOBALS)
        self._torch_loaded = False

    def find_class(self, module: str, name: str) -> Any:
        full = _python3_name(module, name)
        if full in self._allowed:
            return self._allowed[full]
        if full.split(".")[0] == "torch":
            if not self.allow_torch:
                raise RefusedGlobal(full, torch_disabled=True)
            if not self._torch_loaded:
                self._allowed.update(_torch_globals())
                self._torch_loaded = True
            if full in self._allowed:
                return self._allowed[full]
        raise RefusedGlobal(full)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not admitted")


def safe_loads(data: bytes, *, allow_torch: bool = True, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` through :class:`RestrictedUnpickler` (see :func:`safe_load`)."""
    return _load(io.BytesIO(data), allow_torch=allow_torch, source=source)


def safe_load(path: str | os.PathLike[str], *, allow_torch: bool = True) -> Any:
    """Unpickle the file at ``path`` admitting only arrays, tensors and plain containers.

    Raises InputError when the file is missing or not a regular file (a named pipe is refused
    without blocking), DataFormatError when it is not a pickle or references any other
    global (the message names it, e.g. ``posix.system``).
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"'{p}' is a directory, not a pickle file.")
    with open_regular(p, "pickle file") as fh:  # a named pipe would block the open forever
        return _load(fh, allow_torch=allow_torch, source=str(p))


def _load(fh: IO[bytes], *, allow_torch: bool, source: str) -> Any:
    try:
        return RestrictedUnpickler(fh, allow_torch=allow_torch).load()
    except RefusedGlobal as exc:
        if exc.torch_disabled:
            raise DataFormatError(
                f"'{source}' refused to load: it references {exc.name} (torch tensors are "
                "disabled here).",
                hint="Load it with allow_torch=True, or re-save the arrays as numpy.",
            ) from None
        inside = f" (inside {exc.inside})" if exc.inside else ""
        raise DataFormatError(
            f"'{source}' refused to load: it references {exc.name}{inside}, which could run code.",
            hint=_REFUSED_HINT,
        ) from None
    except DataFormatError:
        raise
    except MemoryError:
        raise DataFormatError(
            f"'{source}' could not be loaded: out of memory.",
            hint="The pickle is larger than the available RAM.",
        ) from None
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean "not readable"
        raise DataFormatError(
            f"'{source}' is not a readable pickle ({type(exc).__name__}: {_first_line(str(exc))}).",
            hint="Expected an MMSA feature file (.pkl); it may be truncated or another format.",
        ) from None

"""Reading pickled data files without running code: only numpy arrays, containers, strings and numbers.

Benchmark feature files (the MMSA toolkit's ``aligned_50.pkl`` / ``unaligned_50.pkl`` for CMU-MOSI and CMU-MOSEI)
are pickles. ``pickle.load`` calls whatever global a file names, so a crafted file runs code the moment it is
opened. :func:`load` reads with an unpickler whose ``find_class`` returns only:

* the numpy globals that rebuild arrays, dtypes and scalars (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``,
  ``_frombuffer`` under ``numpy.core`` or numpy 2's ``numpy._core``);
* ``_codecs.encode`` restricted to latin-1 (how numpy arrays pickled by Python 2, or with protocol 2, carry
  their bytes);
* ``collections.OrderedDict``.

Everything else -- ``os.system``, ``builtins.eval``, any class -- is refused before it is imported, with one line
naming the global and the file. Lists, dicts, tuples, strings, bytes, numbers, booleans and None need no global.
Object arrays (MMSA's ``raw_text`` and ``id``) are fine: their items are unpickled by the same restricted reader.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

from mmgpt.errors import UserError

__all__ = ["UnsafePickleError", "load", "loads"]


class UnsafePickleError(UserError):
    """A pickle names a global that is not an array, container, string or number (or is not a pickle at all)."""


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric",
                  "numpy")
_NUMPY_NAMES = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}
_OTHER = {("collections", "OrderedDict")}


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python-2-era numpy pickles use it (``encode(data, 'latin1')``), and nothing else."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}; only latin-1 is accepted")
    return codecs.encode(text, "latin-1", errors)


class _DataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, *, source: str) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 pickles: numpy's str buffers arrive as latin-1
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _OTHER:
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self.source}: the pickle names the global {module}.{name}; refused (a data "
                                "file may only hold numpy arrays, lists, dicts, tuples, strings and numbers)")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: the pickle uses a persistent id ({pid!r}); refused")


def load(path: str | Path) -> Any:
    """The data of a pickle file, read with the restricted unpickler (see the module doc).

    Raises:
        UnsafePickleError: the file names a refused global, or is not a readable pickle (one line naming it).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _load(f, str(path))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from e


def loads(data: bytes, *, source: str = "<bytes>") -> Any:
    """:func:`load` for pickled bytes; ``source`` names them in errors."""
    return _load(io.BytesIO(data), source)


def _load(f: Any, source: str) -> Any:
    try:
        return _DataUnpickler(f, source=source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            ImportError, UnicodeDecodeError) as e:
        raise UnsafePickleError(f"{source}: not a readable data pickle ({type(e).__name__}: {e})") from e

"""The one reader and writer of the heads' files: safetensors with a format name and version in the metadata, read
back with every damage check, so that a cut-short, foreign or corrupted file is refused by name, with what is lost
without it and what to do (:class:`~hf_incr.errors.SavedStateError`). Nothing here unpickles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import SavedStateError, damaged_file_error


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], *, format: str, version: str,
                  metadata: dict[str, Any] | None = None) -> Path:
    """Write ``tensors`` with ``format``/``version`` and ``metadata`` (values JSON-encoded unless strings)."""
    meta = {"format": format, "version": version}
    for key, value in (metadata or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, str(path),
              metadata=meta)
    return Path(path)


class FileReader:
    """Reads one head file hf_incr wrote, checked: ``lost`` says what the user loses without the file and ``fix``
    what to do; every problem raises a :class:`~hf_incr.errors.SavedStateError` naming the file with both."""

    def __init__(self, path: str | Path, lost: str, fix: str):
        self.path, self.lost, self.fix = Path(path), lost, fix

    def error(self, problem: str) -> SavedStateError:
        return damaged_file_error(self.path, problem, self.lost, self.fix)

    def read(self, formats: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Every tensor and the metadata of a file whose ``format`` is one of ``formats`` (non-finite floats are
        refused)."""
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                names = list(handle.keys())  # a safe_open handle is not iterable
                if metadata.get("format") not in formats:
                    raise self.error(f"is not a {formats[0]} file (format {metadata.get('format')!r})")
                tensors = {name: handle.get_tensor(name) for name in names}
        except SavedStateError:
            raise
        except Exception as error:  # safetensors raises its own error types for a damaged header or a short file
            raise self.error(f"could not be read as safetensors ({type(error).__name__}: {error})") from error
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors.values()):
            raise self.error("holds non-finite numbers")
        return tensors, metadata

    def metadata(self) -> dict[str, str]:
        """The file's metadata alone (no tensor is read)."""
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                return handle.metadata() or {}
        except Exception as error:  # a damaged header or a short file
            raise self.error(f"could not be read as safetensors ({type(error).__name__}: {error})") from error

    def require(self, tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...] | int]) -> None:
        """Each named tensor is present with its shape (an int: its number of dimensions)."""
        missing = [name for name in shapes if name not in tensors]
        if missing:
            raise self.error(f"lacks the tensor(s) {missing}")
        wrong = [
            f"{name} {tuple(tensors[name].shape)}" for name, shape in shapes.items()
            if (tensors[name].dim() != shape if isinstance(shape, int) else tuple(tensors[name].shape) != shape)
        ]
        if wrong:
            expected = ", ".join(f"{n} {s}" for n, s in shapes.items())
            raise self.error(f"holds tensors of inconsistent shapes ({', '.join(wrong)}; expected {expected})")

    def json(self, metadata: dict[str, str], key: str) -> Any:
        """A JSON value of the metadata."""
        try:
            return json.loads(metadata[key])
        except (KeyError, ValueError) as error:
            raise self.error(f"has no readable {key!r} in its metadata ({error!r})") from error

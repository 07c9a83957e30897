"""Arrays to files without holding them in memory: an ``.npz`` written chunk by chunk.

``np.load`` reads the result like any ``np.savez`` file. Entries are stored uncompressed, so a
file's size is known before it is written (and checked against the free disk space).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from mnistgen.files import atomic_file

_HEADER_BYTES = 128  # an .npy version 1.0 header, padded


class ArraySpec(NamedTuple):
    """One entry: its dtype, full shape, and an iterable of chunks along the first axis."""

    dtype: np.dtype
    shape: tuple[int, ...]
    chunks: Iterable[np.ndarray]


def npz_size(specs: dict[str, ArraySpec]) -> int:
    """Upper bound on the bytes :func:`write_npz` writes (data, .npy headers, zip records)."""
    data = sum(int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize for s in specs.values())
    return data + len(specs) * (_HEADER_BYTES + 200) + 100


def write_npz(path: Path, specs: dict[str, ArraySpec]) -> None:
    """Write ``{name}.npy`` entries in order, streaming each one's chunks; the file appears atomically
    (``files.atomic_file``)."""
    with atomic_file(path) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, spec in specs.items():
            _write_entry(archive, name, spec)


def _write_entry(archive: zipfile.ZipFile, name: str, spec: ArraySpec) -> None:
    dtype = np.dtype(spec.dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(spec.shape)}
    written = 0
    with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for chunk in spec.chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            f.write(chunk.tobytes())
            written += chunk.shape[0]
    if written != spec.shape[0]:
        raise ValueError(f"{name}: {written} rows written, the header says {spec.shape[0]}")

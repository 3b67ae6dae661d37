"""The compiled exact-anchor matcher (_match.c, _match_impl.h), built with cc on first use.

The dataset build matches millions of (insertion, later request) pairs; DuckDB's string
functions take about 24 CPU-microseconds a row for the exact anchor alone, and Python about 150
for a fuzzy one; the compiled matcher does either in about two. It follows ``match_later_text``
(the reference) over code points, and tests hold the two equal.

The library is built once per source version into ``$GRISTMILL_NATIVE_DIR`` (default
``~/.cache/gristmill/native``) with ``$CC`` (default ``cc``); ``make install`` builds it ahead.
Without a compiler, or with ``GRISTMILL_NATIVE=0``, ``available()`` is False and callers use the
SQL path, which gives the same results.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["INPUTS", "NativeMatch", "available", "build", "main", "match"]

_SOURCE = Path(__file__).with_name("_match.c")
_HEADERS = (Path(__file__).with_name("_match_impl.h"),)
# Column order of gm_match's inputs and of its params (see _match.c).
INPUTS = ("inserted", "prefix_tail", "suffix_head", "later_prefix", "later_suffix")
_PARAMS = (
    "anchor_chars",
    "min_anchor_chars",
    "fuzzy_anchor_lines",
    "right_anchor_min_chars",
    "moved_min_chars",
    "prefix_tail_chars",
    "suffix_head_chars",
    "later_prefix_chars",
    "later_suffix_chars",
    "span_slack_chars",
)
FOUND, COMPLETE, CLEAN, MOVED, FUZZY = 1, 2, 4, 8, 32

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _library_path() -> Path:
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in (_SOURCE, *_HEADERS)))
    digest = digest.hexdigest()[:16]
    root = os.environ.get("GRISTMILL_NATIVE_DIR") or str(
        Path.home() / ".cache" / "gristmill" / "native"
    )
    return Path(root) / f"gm_match-{digest}.so"


def build() -> Path:
    """Compile _match.c (if this version is not built yet); the library's path."""
    target = _library_path()
    if target.exists():
        return target
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise OSError(f"no C compiler ({compiler}) to build the native matcher")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        subprocess.run(
            [compiler, "-O3", "-shared", "-fPIC", "-o", str(partial), str(_SOURCE)],
            check=True,
            capture_output=True,
        )
        os.replace(partial, target)  # atomic: a concurrent build wins or loses whole
    return target


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("GRISTMILL_NATIVE", "1") == "0":
            return None
        try:
            lib = ctypes.CDLL(str(build()))
        except (OSError, subprocess.CalledProcessError):
            return None
        p = ctypes.c_void_p
        lib.gm_match.restype = p
        lib.gm_match.argtypes = [ctypes.c_int64, p, p, p, p, p, p, p]
        lib.gm_free.argtypes = [p]
        lib.gm_failed.argtypes = [p]
        lib.gm_out_size.restype = ctypes.c_int64
        lib.gm_out_size.argtypes = [p, ctypes.c_int]
        lib.gm_out_data.restype = p
        lib.gm_out_data.argtypes = [p, ctypes.c_int]
        lib.gm_out_offsets.restype = p
        lib.gm_out_offsets.argtypes = [p, ctypes.c_int]
        _lib = lib
        return lib


def available() -> bool:
    return _load() is not None


class NativeMatch:
    """Per-row results: ``flags`` (FOUND | FUZZY | COMPLETE | CLEAN | MOVED), ``similarity``
    (of found rows), and ``text``, ``compare_from``, ``compare_to`` (null unless found)."""

    def __init__(
        self,
        flags: np.ndarray,
        similarity: np.ndarray,
        text: pa.Array,
        compare_from: pa.Array,
        compare_to: pa.Array,
    ) -> None:
        self.flags = flags
        self.similarity = similarity
        self.text = text
        self.compare_from = compare_from
        self.compare_to = compare_to


def _strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One string or large_string array, nulls as empty strings."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.type not in (pa.string(), pa.large_string()):
        array = array.cast(pa.large_string())
    if array.null_count:  # a null's offsets need not be equal
        array = array.fill_null("")
    return array


def match(table: pa.Table, params: object, max_compare_chars: int) -> NativeMatch:
    """Run the compiled matcher over ``table`` (columns INPUTS and ``accepted``), a record
    batch at a time: the texts are read where they are, not first copied into one array."""
    lib = _load()
    if lib is None:
        raise RuntimeError("the native matcher is not available")
    knobs = np.array(
        [int(getattr(params, name)) for name in _PARAMS] + [int(max_compare_chars)], np.int64
    )
    parts = [
        _match_batch(lib, batch, knobs)
        for batch in table.select([*INPUTS, "accepted"]).to_batches()
        if batch.num_rows
    ]
    if not parts:
        empty = pa.chunked_array([], pa.large_string())
        return NativeMatch(np.zeros(0, np.uint8), np.zeros(0, np.float64), empty, empty, empty)
    flags = np.concatenate([part[0] for part in parts])
    sims = np.concatenate([part[1] for part in parts])
    texts = [pa.chunked_array([part[2][k] for part in parts]) for k in range(3)]
    return NativeMatch(flags, sims, *texts)


def _match_batch(
    lib: ctypes.CDLL, batch: pa.RecordBatch, knobs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[pa.Array]]:
    n = batch.num_rows
    columns = [_strings(batch.column(name)) for name in INPUTS]
    offsets = (ctypes.c_void_p * len(INPUTS))()
    data = (ctypes.c_void_p * len(INPUTS))()
    wide = np.zeros(len(INPUTS), np.uint8)
    keep = []
    for k, array in enumerate(columns):
        _, offset_buffer, data_buffer = array.buffers()
        wide[k] = array.type == pa.large_string()
        offsets[k] = offset_buffer.address + array.offset * (8 if wide[k] else 4)
        # An all-empty column may have no data buffer: point at a byte of our own.
        if data_buffer is None or data_buffer.size == 0:
            empty = np.zeros(1, np.uint8)
            keep.append(empty)
            data[k] = empty.ctypes.data
        else:
            data[k] = data_buffer.address
    accepted = np.ascontiguousarray(
        batch.column("accepted").fill_null(False).to_numpy(zero_copy_only=False), dtype=np.uint8
    )
    flags = np.zeros(n, np.uint8)
    sims = np.zeros(n, np.float64)
    handle = lib.gm_match(
        n,
        ctypes.addressof(offsets),
        wide.ctypes.data,
        ctypes.addressof(data),
        accepted.ctypes.data,
        knobs.ctypes.data,
        flags.ctypes.data,
        sims.ctypes.data,
    )
    if not handle:
        raise MemoryError("native matcher: out of memory")
    try:
        if lib.gm_failed(handle):
            raise MemoryError("native matcher: out of memory")
        found = pa.array((flags & FOUND).astype(bool))
        validity = pc.invert(found)  # null where not found
        outputs = []
        for k in range(3):
            size = lib.gm_out_size(handle, k)
            offs = ctypes.string_at(lib.gm_out_offsets(handle, k), (n + 1) * 8)
            body = ctypes.string_at(lib.gm_out_data(handle, k), size) if size else b""
            array = pa.Array.from_buffers(
                pa.large_string(), n, [None, pa.py_buffer(offs), pa.py_buffer(body)]
            )
            outputs.append(pc.if_else(validity, pa.scalar(None, pa.large_string()), array))
    finally:
        lib.gm_free(handle)
    del keep
    return flags, sims, outputs


def main() -> None:
    """make install: build ahead, or say why dataset builds will use the SQL matcher."""
    try:
        print(f"native matcher: {build()}")
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"native matcher not built ({exc}); dataset builds use the SQL matcher")

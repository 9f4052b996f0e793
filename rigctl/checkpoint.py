"""Checkpoint files that cannot execute code: a JSON tree plus numpy arrays in one `.npz` archive.

A checkpoint holds the loop's, the rig's and the models' state. Pickle would run whatever code a
crafted `checkpoint.pkl` names as soon as someone resumes a run directory they were sent, so the
state is encoded as plain data instead: JSON for the tree (dicts with any scalar keys, lists,
tuples, numbers, strings) and arrays stored by numpy with `allow_pickle=False` (object arrays are
refused both ways). The archive is written under a temporary name and renamed, so a kill leaves
the previous checkpoint whole.

Small arrays of plain numbers (at most INLINE_BYTES) go into the JSON tree as base64: a culture's state
holds thousands of them mid-run, and one archive member each made a checkpoint cost ~0.4 s. Lists of plain
numbers (the models' per-session histories, which grow with the run) are taken whole: as JSON numbers, or,
for 16 floats or more, as float64 bytes; lists of 8 or more arrays of one dtype as one flat array and their
shapes. A checkpoint at session 100 then encodes in ~6 ms of Python; a pickle took ~4 ms in C (a 100-session
main job writes 400 checkpoints, which is most of what it is slower than with pickle).

Format version 3 (small arrays inline); version 2 (every array an archive member) is still read. Version 1
was the pickle file `checkpoint.pkl`, which is no longer read.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from rigctl.errors import StoreError

FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
INLINE_BYTES = 4096
_INLINE_KINDS = "biufc"  # bool, integers, floats, complex: dtypes that are only bytes
FILE_NAME = "checkpoint.npz"
LEGACY_FILE_NAME = "checkpoint.pkl"
MAX_ARCHIVE_BYTES = 8 * 2**30  # a checkpoint of a large culture is ~100 MB; refuse absurd files unread
_TREE_KEY = "__tree__"
_REGISTRY: dict[str, type] = {}


def checkpointable(cls: type) -> type:
    """Class decorator: instances are stored as their attributes and rebuilt without calling
    `__init__`. Only registered classes are ever rebuilt, so a file cannot name one of its own."""
    _REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


class _Encoder:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def encode(self, obj: Any, where: str = "state") -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__f": repr(obj)}
        if isinstance(obj, (np.ndarray, np.generic)):
            array = np.asarray(obj)
            if array.dtype.hasobject:
                raise StoreError(f"cannot checkpoint {where}: an object array")
            scalar = isinstance(obj, np.generic)
            if array.dtype.kind in _INLINE_KINDS and array.dtype.fields is None and array.nbytes <= INLINE_BYTES:
                return {"__b": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii"),
                        "dtype": array.dtype.str, "shape": list(array.shape), "scalar": scalar}
            name = f"a{len(self.arrays)}"
            self.arrays[name] = array
            return {"__a": name, "scalar": scalar}
        if isinstance(obj, tuple):
            return {"__t": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            if _stackable(obj):  # a history of per-session arrays: one archive member, not one node each
                flat = np.concatenate([a.ravel() for a in obj])
                return {"__s": self.encode(flat, where), "shapes": [list(a.shape) for a in obj]}
            kinds = set(map(type, obj))
            if kinds == {float} and len(obj) >= 16:  # binary: exact (NaN too), and no repr per float
                return {"__l": base64.b64encode(np.asarray(obj, dtype="<f8").tobytes()).decode("ascii")}
            if kinds <= {int} or (kinds <= {int, float} and _all_finite(obj)):  # JSON numbers as they are
                return obj
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            if set(map(type, obj)) <= {str}:  # the common case: a JSON object, keys as they are
                return {"__m": {k: self.encode(v, f"{where}[{k!r}]") for k, v in obj.items()}}
            return {"__d": [[self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")]
                            for k, v in obj.items()]}
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if _REGISTRY.get(name) is type(obj):
            return {"__o": name, "attrs": self.encode(dict(vars(obj)), f"{where}.{type(obj).__name__}")}
        raise StoreError(f"cannot checkpoint {where}: a {type(obj).__name__} is not plain data "
                         "(register its class with rigctl.checkpoint.checkpointable)")


def _stackable(items: list) -> bool:
    """Eight or more numpy arrays (not scalars) of one plain number dtype: stored as one flat array."""
    if len(items) < 8 or set(map(type, items)) != {np.ndarray}:
        return False
    dtype = items[0].dtype
    return dtype.kind in _INLINE_KINDS and dtype.fields is None and all(a.dtype == dtype for a in items)


def _all_finite(numbers: list) -> bool:
    """Whether every int and float is finite (an int beyond float range counts as not: encoded one by one)."""
    try:
        return all(map(math.isfinite, numbers))
    except OverflowError:
        return False


def _decode(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    if "__a" in node:
        array = arrays[node["__a"]]
        return array[()] if node.get("scalar") else array
    if "__b" in node:
        return _inline_array(node)
    if "__s" in node:  # a list of arrays stored flat
        flat = np.asarray(_decode(node["__s"], arrays))
        shapes = [tuple(int(n) for n in shape) for shape in node["shapes"]]
        sizes = [math.prod(shape) for shape in shapes]
        if sum(sizes) != flat.size:
            raise ValueError("stacked arrays do not add up to their shapes")
        bounds = np.cumsum([0, *sizes])
        return [flat[bounds[i]:bounds[i + 1]].reshape(shape).copy() for i, shape in enumerate(shapes)]
    if "__l" in node:  # a list of floats, stored as float64 bytes
        return np.frombuffer(base64.b64decode(node["__l"], validate=True), dtype="<f8").tolist()
    if "__t" in node:
        return tuple(_decode(v, arrays) for v in node["__t"])
    if "__m" in node:
        return {str(k): _decode(v, arrays) for k, v in node["__m"].items()}
    if "__d" in node:
        return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in node["__d"]}
    if "__f" in node:
        return float(node["__f"])
    if "__o" in node:
        cls = _REGISTRY.get(node["__o"])
        if cls is None:
            raise ValueError(f"class {str(node['__o'])[:80]} is not checkpointable")
        obj = cls.__new__(cls)
        vars(obj).update(_decode(node["attrs"], arrays))
        return obj
    raise ValueError(f"unknown node {sorted(node)[:3]}")


def _inline_array(node: dict) -> Any:
    """An array stored in the tree; its dtype must be a plain number type (never an object dtype)."""
    dtype = np.dtype(str(node["dtype"]))
    if dtype.kind not in _INLINE_KINDS or dtype.fields is not None:
        raise ValueError(f"inline array of dtype {str(node['dtype'])[:20]}")
    shape = tuple(int(n) for n in node["shape"])
    array = np.frombuffer(base64.b64decode(node["__b"], validate=True), dtype=dtype).reshape(shape).copy()
    return array[()] if node.get("scalar") else array


def _hashable(key: Any) -> Any:
    return key.item() if isinstance(key, np.generic) else key


def write_checkpoint_file(directory: Path, payload: dict[str, Any]) -> Path:
    """Atomically replace `directory/checkpoint.npz` with `payload` (plain data and arrays)."""
    encoder = _Encoder()
    tree = {"format_version": FORMAT_VERSION, "payload": encoder.encode(payload)}
    text = json.dumps(tree, separators=(",", ":"), allow_nan=False).encode()
    arrays = dict(encoder.arrays)
    arrays[_TREE_KEY] = np.frombuffer(text, dtype=np.uint8)
    path = Path(directory) / FILE_NAME
    tmp = path.with_name(FILE_NAME + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_checkpoint_file(directory: Path) -> dict[str, Any] | None:
    """The payload of `directory/checkpoint.npz`, or None when there is none; StoreError if unreadable."""
    directory = Path(directory)
    path = directory / FILE_NAME
    if not path.exists():
        if (directory / LEGACY_FILE_NAME).exists():
            raise StoreError(f"{directory / LEGACY_FILE_NAME}: a checkpoint in the old pickle format, which "
                             "could run code when loaded; this rigctl does not read it. The run predates "
                             "checkpoint format 2: start it again")
        return None
    if not path.is_file() or path.stat().st_size > MAX_ARCHIVE_BYTES:
        raise StoreError(f"{path}: not a regular checkpoint file of at most {MAX_ARCHIVE_BYTES} bytes")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        tree = json.loads(bytes(arrays.pop(_TREE_KEY)).decode())
        if tree.get("format_version") not in READABLE_VERSIONS:
            raise StoreError(f"{path}: checkpoint format {tree.get('format_version')!r}; this rigctl reads "
                             f"formats {', '.join(map(str, READABLE_VERSIONS))}")
        return _decode(tree["payload"], arrays)
    except StoreError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RecursionError, zipfile.BadZipFile, io.UnsupportedOperation,
            UnicodeDecodeError, EOFError, binascii.Error) as exc:
        raise StoreError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {str(exc)[:120]})") from exc

"""Input for the model, the only module of `rigctl.model` that touches files: the authors' released .mat
files (spec 1.6) and rigctl run directories (via `rigctl.export.load_run_trials`). Both end as
`rigctl.model.data.Trials`, so everything after loading is one code path."""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rigctl.errors import ModelInputError, RigctlError
from rigctl.model.data import Trials, make_trials

#: Released session length (spec 1.3): 100 sessions of 256 steps.
RELEASED_SESSION_LENGTH = 256


@dataclass(frozen=True, eq=False)
class Source:
    """One loaded file or run: its condition tag (e.g. 'bic', or the run's folder name) and its cultures."""

    path: Path
    condition: str
    cultures: list[Trials]


def _condition_of(path: Path, keys: list[str]) -> str:
    cells = [k for k in keys if k.startswith("data_")]
    if len(cells) != 1:
        raise ModelInputError(f"{path}: expected exactly one cell array named data_<condition>, found {cells}")
    return cells[0][len("data_"):]


def _read_mat(path: Path) -> dict:
    """scipy's loadmat, with every way a truncated or corrupt file fails turned into ModelInputError."""
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        if path.stat().st_size == 0:
            raise ModelInputError(f"{path}: empty file (0 bytes); expected a MATLAB v5 .mat file")
        return scipy.io.loadmat(str(path))
    except NotImplementedError as exc:  # scipy reads v4-v7; v7.3 files are HDF5
        raise ModelInputError(f"{path}: a MATLAB v7.3 (HDF5) file, which is not read; save it from MATLAB "
                              f"with save(..., '-v7') ({exc})") from exc
    except OSError as exc:
        if exc.errno is not None:  # the system refused (permissions, a directory, ...)
            raise ModelInputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        raise _corrupt(path, exc) from exc  # scipy's own "could not read bytes": the file ends early
    # a cut or damaged file fails deep inside the reader, with whichever of these the damage triggers (a
    # damaged size field asks for an absurd allocation: MemoryError)
    except (MatReadError, ValueError, IndexError, KeyError, TypeError, EOFError, OverflowError, MemoryError,
            struct.error, zlib.error) as exc:
        raise _corrupt(path, exc) from exc


def _corrupt(path: Path, exc: BaseException) -> ModelInputError:
    """The one-line error for a .mat file the reader could not parse, with the reader's own reason."""
    return ModelInputError(f"{path}: truncated or corrupt: not a readable MATLAB v5 file ({type(exc).__name__}: {exc})")


def load_mat(path: Path) -> Source:
    """A released `response_data_<cond>.mat`: cell array data_<cond> of structs with s, o, r (spec 1.6)."""
    path = Path(path)
    mat = _read_mat(path)
    cond = _condition_of(path, [k for k in mat if not k.startswith("__")])
    cell = mat[f"data_{cond}"]
    if cell.dtype != object:
        raise ModelInputError(f"{path}: data_{cond} is not a cell array")
    cultures = []
    for n, item in enumerate(cell.ravel(), start=1):
        try:
            s, o, r = (np.asarray(item[f][0, 0]) for f in ("s", "o", "r"))
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            raise ModelInputError(f"{path}: culture {n} lacks the fields s, o, r") from exc
        cultures.append(make_trials(s, o, r, None, RELEASED_SESSION_LENGTH, name=f"{cond}:{n}"))
    if not cultures:
        raise ModelInputError(f"{path}: data_{cond} holds no cultures")
    return Source(path, cond, cultures)


def load_run(run_dir: Path) -> Source:
    """A rigctl run directory, through the trial export (s, o, r, session per trial)."""
    from rigctl.export import load_run_trials

    run_dir = Path(run_dir)
    try:
        t = load_run_trials(run_dir)
    except RigctlError as exc:
        raise ModelInputError(f"{run_dir}: {exc}") from exc
    name = run_dir.resolve().name
    return Source(run_dir, name, [make_trials(t["s"], t["o"], t["r"], t["session"], name=f"{name}:1")])


def load_source(path: Path) -> Source:
    """A .mat file or a run directory."""
    path = Path(path)
    if path.is_dir():
        return load_run(path)
    if path.suffix.lower() == ".mat" and path.is_file():
        return load_mat(path)
    raise ModelInputError(f"{path}: neither a .mat file nor a run directory")


_CULTURE = re.compile(r"^([A-Za-z0-9_.+-]+):(\d+)$")


def pick_cultures(sources: list[Source], culture: str | None) -> list[tuple[Source, int]]:
    """(source, 0-based culture index) pairs: all of them, or the one named by 'COND:N' (N 1-based)."""
    if culture is None:
        return [(src, i) for src in sources for i in range(len(src.cultures))]
    m = _CULTURE.match(culture)
    if not m:
        raise ModelInputError(f"--culture must look like COND:N (e.g. dzp:5), got {culture!r}")
    cond, n = m.group(1), int(m.group(2))
    known = {src.condition: src for src in sources}
    if cond not in known:
        raise ModelInputError(f"unknown culture {culture!r}: condition {cond!r} is not among the sources "
                              f"({', '.join(sorted(known))})")
    src = known[cond]
    if not 1 <= n <= len(src.cultures):
        raise ModelInputError(f"unknown culture {culture!r}: {cond} has cultures 1..{len(src.cultures)}")
    return [(src, n - 1)]

"""The tables the stages hand to each other: their schemas, a validating reader, cross-table checks.

Every stage reads the earlier stages' CSV files through :func:`read_table`, which checks the columns,
parses each column as its declared type, checks allowed values, ranges and unique keys, and raises one
:class:`~raxnet.errors.StageInputError` line that names the file, the row and what to do. The
``check_*`` functions make sure that tables of different stages agree (same subjects, every slice present).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from raxnet.config import STAGE_DIRS
from raxnet.errors import StageInputError
from raxnet.planes import PLANE_AXIS, PLANES

#: The script of each stage, for "re-run stage NN (...)" hints.
STAGE_SCRIPTS: dict[str, str] = {
    "dataset": "01_dataset/extract_lesion_info.py",
    "split": "02_data_splitting/split_subjects.py",
    "convert": "03_moving_converting/convert_to_2d.py",
    "folds": "04_cross_validation/make_folds.py",
    "arrays": "05_prepare_arrays/prepare_arrays.py",
    "model": "06_model/build_model.py",
    "train": "07_train/train.py",
    "fusion": "08_fusion/fuse.py",
}
SETS = ("train", "holdout")


def rerun_hint(stage: str) -> str:
    """``re-run stage 02 (02_data_splitting/split_subjects.py)``."""
    return f"re-run stage {STAGE_DIRS[stage][:2]} ({STAGE_SCRIPTS.get(stage, STAGE_DIRS[stage])})"


@dataclass(frozen=True)
class Column:
    """A column: ``kind`` is str, int, float or bool; ``allowed`` values; ``minimum`` for numbers."""

    kind: str = "str"
    allowed: tuple | None = None
    minimum: float | None = None
    nullable: bool = False


@dataclass(frozen=True)
class Table:
    """A stage's table: file name (``{plane}`` for per-plane tables), producing stage, columns, key."""

    name: str
    stage: str
    columns: Mapping[str, Column]
    key: tuple[str, ...] = ()
    optional: tuple[str, ...] = field(default=())  # columns read when present

    def path(self, work_dir: str | Path, plane: str | None = None) -> Path:
        return Path(work_dir) / STAGE_DIRS[self.stage] / self.name.format(plane=plane)


_SUBJECT = Column("str")
_COUNT = Column("int", minimum=0)

SUBJECTS = Table("subjects.csv", "dataset", {
    # image paths and grid may be empty in tables made from lesion statistics alone (raxnet.reference); stage 03
    # refuses such a subject when it needs the images
    "subject": _SUBJECT, "site": Column("str"), "t1_path": Column("str", nullable=True),
    "mask_path": Column("str", nullable=True),
    "lesion_voxels": _COUNT, "lesion_volume_mm3": Column("float", minimum=0, nullable=True), "n_lesions": _COUNT,
    "shape": Column("str", nullable=True), "spacing_mm": Column("str", nullable=True),
}, key=("subject",))
SLICES = Table("slices_{plane}.csv", "dataset", {
    "subject": _SUBJECT, "slice": _COUNT, "lesion_pixels": _COUNT, "n_lesions": _COUNT, "brain_pixels": _COUNT,
}, key=("subject", "slice"))
SPLIT = Table("split.csv", "split", {
    "subject": _SUBJECT, "site": Column("str"), "lesion_voxels": _COUNT, "volume_bin": Column("str"),
    "set": Column("str", allowed=SETS),
}, key=("subject",))
INDEX = Table("index.csv", "convert", {
    "subject": _SUBJECT, "set": Column("str", allowed=SETS), "plane": Column("str", allowed=tuple(PLANES)),
    "n_slices": Column("int", minimum=1), "height": Column("int", minimum=1), "width": Column("int", minimum=1),
    "image_path": Column("str"), "mask_path": Column("str"),
}, key=("subject", "plane"), optional=("source",))
SUBJECT_FOLDS = Table("subject_folds.csv", "folds", {"subject": _SUBJECT, "fold": Column("int", minimum=1)},
                      key=("subject",))
PLANE_FOLDS = Table("{plane}_folds.csv", "folds", {
    "subject": _SUBJECT, "slice": _COUNT, "fold": Column("int", minimum=1),
    "kind": Column("str", allowed=("lesion", "normal")), "lesion_pixels": _COUNT,
    "area_bin": Column("str", nullable=True),
}, key=("subject", "slice"))

_KIND_WORDS = {"int": "an integer", "float": "a number", "str": "text", "bool": "true/false"}


def _fail(path: Path, table: Table, what: str) -> StageInputError:
    return StageInputError(f"{path}: {what}; {rerun_hint(table.stage)} or restore the file")


def _parse(values: pd.Series, col: Column, name: str, path: Path, table: Table) -> pd.Series:
    missing = values.isna() | (values.astype(str).str.strip() == "")
    if missing.any() and not col.nullable:
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise _fail(path, table, f"row {row + 2}: column {name} is empty")
    if col.kind == "str":
        out = values.astype(object).where(~missing, None)
        out = out.map(lambda v: v if v is None else str(v))
    elif col.kind in ("int", "float"):
        num = pd.to_numeric(values.where(~missing), errors="coerce")
        bad = num.isna() & ~missing
        if col.kind == "int":
            bad |= ~missing & num.notna() & (num != np.round(num))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise _fail(path, table, f"row {row + 2}: column {name} = {values.iloc[row]!r} is not "
                                     f"{_KIND_WORDS[col.kind]}")
        if col.minimum is not None and (num < col.minimum).any():
            row = int(np.flatnonzero((num < col.minimum).to_numpy())[0])
            raise _fail(path, table, f"row {row + 2}: column {name} = {values.iloc[row]!r} is below {col.minimum:g}")
        out = num.astype(np.int64) if col.kind == "int" and not missing.any() else num
    else:
        text = values.astype(str).str.strip().str.lower()
        ok = text.isin(("true", "false", "1", "0")) | missing
        if not ok.all():
            row = int(np.flatnonzero((~ok).to_numpy())[0])
            raise _fail(path, table, f"row {row + 2}: column {name} = {values.iloc[row]!r} is not true/false")
        out = text.isin(("true", "1"))
    if col.allowed is not None:
        bad = ~out.isin(col.allowed) & ~missing
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise _fail(path, table, f"row {row + 2}: column {name} = {values.iloc[row]!r} is not one of "
                                     f"{', '.join(map(str, col.allowed))}")
    return out


def read_table(path: str | Path, table: Table, *, columns: Sequence[str] | None = None,
               allow_empty: bool = False) -> pd.DataFrame:
    """Read and validate ``path`` against ``table``; ``columns`` limits the required columns (the other
    schema columns are checked when present; columns outside the schema stay text).

    Raises :class:`StageInputError` with one line naming the file, the row and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise StageInputError(f"{path}: not found (run stage {STAGE_DIRS[table.stage][:2]} first: "
                              f"{STAGE_SCRIPTS.get(table.stage, '')})")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise _fail(path, table, f"cannot read CSV ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    wanted = list(columns) if columns is not None else list(table.columns)
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise _fail(path, table, f"missing column(s) {', '.join(missing)}")
    if df.empty and not allow_empty:
        raise _fail(path, table, "no rows")
    # Every schema column present is checked, required or not.
    for name in [c for c in [*table.columns, *table.optional] if c in df.columns]:
        col = table.columns.get(name, Column("str", nullable=True))
        df[name] = _parse(df[name], col, name, path, table)
    key = [k for k in table.key if k in df.columns]
    if key:
        dup = df.duplicated(key, keep="first")
        if dup.any():
            row = int(np.flatnonzero(dup.to_numpy())[0])
            what = ", ".join(f"{k} {df[k].iloc[row]}" for k in key)
            raise _fail(path, table, f"row {row + 2}: duplicate {what}")
    return df


# ---------------------------------------------------------------------------------- cross-table checks


def _names(values: Iterable[str], limit: int = 5) -> str:
    values = sorted(values)
    return ", ".join(values[:limit]) + (f" (+{len(values) - limit} more)" if len(values) > limit else "")


def check_subjects_agree(have: Iterable[str], have_path: Path, have_table: Table, want: Iterable[str],
                         want_path: Path, what: str = "subjects") -> None:
    """``have`` (read from ``have_path``) must hold exactly the ``want`` subjects of ``want_path``."""
    have, want = set(have), set(want)
    if have == want:
        return
    missing, extra = sorted(want - have), sorted(have - want)
    if missing:
        raise _fail(Path(have_path), have_table, f"{len(missing)} {what} of {want_path} missing: {_names(missing)}")
    raise _fail(Path(have_path), have_table, f"{len(extra)} subject(s) not among the {what} of {want_path}: "
                                             f"{_names(extra)}")


def check_slices_complete(slices: pd.DataFrame, path: Path, plane: str, subjects: pd.DataFrame,
                          subjects_path: Path) -> None:
    """Stage 01's per-slice table lists every slice 0..n-1 of every subject of ``subjects`` (n from its
    ``shape`` column when present), so a deleted row is caught."""
    info = subjects.set_index("subject")
    check_subjects_agree(slices["subject"].unique(), path, SLICES, info.index, subjects_path)
    counts = slices.groupby("subject")["slice"].agg(["count", "max"])
    for subject, row in counts.iterrows():
        n = int(row["max"]) + 1
        if "shape" in info.columns and isinstance(info.at[subject, "shape"], str):
            try:
                n = int(info.at[subject, "shape"].lower().split("x")[PLANE_AXIS[plane]])
            except (ValueError, IndexError):
                raise _fail(Path(subjects_path), SUBJECTS, f"subject {subject}: bad shape "
                                                            f"{info.at[subject, 'shape']!r}") from None
        if int(row["count"]) != n or int(row["max"]) != n - 1:
            raise _fail(path, SLICES, f"subject {subject} has {int(row['count'])} of its {n} {plane} slices "
                                      "(a row is missing)")


def check_plane_folds(plane_folds: pd.DataFrame, path: Path, subject_folds: pd.DataFrame, folds_path: Path,
                      split: pd.DataFrame | None = None, split_path: Path | None = None) -> None:
    """A ``<plane>_folds.csv`` agrees with ``subject_folds.csv`` (its subjects have those folds) and, given
    ``split.csv``, lists every lesion voxel of every subject (no lesion slice dropped)."""
    fold_of = subject_folds.set_index("subject")["fold"]
    extra = sorted(set(plane_folds["subject"]) - set(fold_of.index))
    if extra:  # a subject may lack slices here (no lesion, no normal slice drawn), never a fold
        raise _fail(path, PLANE_FOLDS, f"{len(extra)} subject(s) without a fold in {folds_path}: {_names(extra)}")
    wrong = plane_folds["fold"].to_numpy() != plane_folds["subject"].map(fold_of).to_numpy()
    if wrong.any():
        r = plane_folds.iloc[int(np.flatnonzero(wrong)[0])]
        raise _fail(path, PLANE_FOLDS, f"subject {r['subject']} is in fold {r['fold']} here but in fold "
                                       f"{fold_of[r['subject']]} in {folds_path}")
    bad_kind = (plane_folds["kind"] == "lesion") != (plane_folds["lesion_pixels"] > 0)
    if bad_kind.any():
        r = plane_folds.iloc[int(np.flatnonzero(bad_kind.to_numpy())[0])]
        raise _fail(path, PLANE_FOLDS, f"slice {r['slice']} of {r['subject']}: kind {r['kind']} with "
                                       f"{r['lesion_pixels']} lesion pixels")
    if split is not None and "lesion_voxels" in split.columns:
        voxels = split.set_index("subject")["lesion_voxels"]
        got = plane_folds[plane_folds["kind"] == "lesion"].groupby("subject")["lesion_pixels"].sum()
        got = got.reindex(fold_of.index, fill_value=0)
        off = [s for s in got.index if s in voxels.index and int(got[s]) != int(voxels[s])]
        if off:
            s = off[0]
            raise _fail(path, PLANE_FOLDS, f"the lesion slices of {s} hold {int(got[s])} lesion pixels, "
                                           f"{split_path} says lesion_voxels = {int(voxels[s])} (a lesion slice is missing)")

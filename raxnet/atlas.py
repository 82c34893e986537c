"""Discovery of the ATLAS v2.0 BIDS tree.

Layout (the root is the folder that contains ``Training/``)::

    <root>/Training/R001/sub-r001s001/ses-1/anat/sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
    <root>/Training/R001/sub-r001s001/ses-1/anat/sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz
    <root>/Testing/R001/sub-.../ses-1/anat/..._T1w.nii.gz          (no masks: unlabelled)

``.nii`` is accepted as well as ``.nii.gz``; other files (JSON sidecars, supplementary CSV/xlsx at the
top level) are ignored. A subject whose T1 has no mask beside it is listed as unlabelled, not an error.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from raxnet.errors import InputError

PARTS: tuple[str, ...] = ("Training", "Testing")
T1_SUFFIX = "_space-MNI152NLin2009aSym_T1w"
MASK_SUFFIX = "_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask"
COLUMNS = ["site", "subject", "session", "t1_path", "mask_path", "labelled", "part"]

_SITE_RE = re.compile(r"^R\d+$")
_EXTS = (".nii.gz", ".nii")


def _find(anat: Path, stem: str) -> Path | None:
    """``<anat>/<stem>.nii.gz`` or ``.nii`` (gzip preferred when both exist)."""
    for ext in _EXTS:
        path = anat / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def _expected(root: Path) -> str:
    return (
        f"{root}: not an ATLAS v2.0 root; expected <root>/Training/R###/sub-*/ses-*/anat/"
        f"sub-*_ses-*{T1_SUFFIX}.nii.gz (pass the folder that contains Training/)"
    )


def discover(root: str | Path) -> pd.DataFrame:
    """Every subject/session with a T1w image under ``<root>/{Training,Testing}/R###/``.

    Returns a DataFrame with columns ``site, subject, session, t1_path, mask_path, labelled, part``
    (``mask_path`` is None for unlabelled subjects), sorted by subject then session. Raises
    :class:`InputError` if ``root`` is not a folder or holds no subject at all (e.g. it points at
    ``Training/`` itself or at an unrelated folder).
    """
    # Absolute paths in subjects.csv keep later stages independent of the directory they are run from.
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise InputError(f"{root}: data root not found (expected the ATLAS folder that contains Training/)")
    rows = []
    for part in PARTS:
        part_dir = root / part
        if not part_dir.is_dir():
            continue
        for site_dir in sorted(p for p in part_dir.iterdir() if p.is_dir() and _SITE_RE.match(p.name)):
            for sub_dir in sorted(p for p in site_dir.glob("sub-*") if p.is_dir()):
                for ses_dir in sorted(p for p in sub_dir.glob("ses-*") if p.is_dir()):
                    anat = ses_dir / "anat"
                    stem = f"{sub_dir.name}_{ses_dir.name}"
                    t1 = _find(anat, stem + T1_SUFFIX)
                    if t1 is None:
                        continue
                    mask = _find(anat, stem + MASK_SUFFIX)
                    rows.append(
                        {
                            "site": site_dir.name,
                            "subject": sub_dir.name,
                            "session": ses_dir.name,
                            "t1_path": str(t1),
                            "mask_path": str(mask) if mask is not None else None,
                            "labelled": mask is not None,
                            "part": part,
                        }
                    )
    if not rows:
        raise InputError(_expected(root))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["mask_path"] = df["mask_path"].astype(object).where(df["labelled"], None)
    return df.sort_values(["subject", "session", "part"], kind="stable").reset_index(drop=True)


def labelled_subjects(root: str | Path) -> pd.DataFrame:
    """The labelled rows of :func:`discover` (T1 and lesion mask present); InputError if there are none."""
    df = discover(root)
    out = df[df["labelled"]].reset_index(drop=True)
    if out.empty:
        raise InputError(f"{Path(root)}: no labelled subject (no *{MASK_SUFFIX}.nii.gz beside any T1w)")
    return out


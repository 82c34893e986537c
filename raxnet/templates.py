"""The MNI152NLin2009a templates that ship inside nilearn's wheel, on the ATLAS grid.

ATLAS v2.0 images are 197x233x189 at 1 mm in MNI152NLin2009aSym with the affine below (origin at
(-98, -134, -72) mm, RAS+); nilearn's 2009a symmetric T1/GM/WM templates and brain mask are on exactly
this grid, and its ``resolution=2`` versions give the same field of view at 2 mm (99x117x95). Nothing
is downloaded.
"""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np

#: The real ATLAS v2.0 1 mm affine (identical to nilearn's MNI152 2009a template at resolution 1).
ATLAS_AFFINE = np.array(
    [[1.0, 0.0, 0.0, -98.0], [0.0, 1.0, 0.0, -134.0], [0.0, 0.0, 1.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)
ATLAS_SHAPE = (197, 233, 189)

TEMPLATE_KINDS = ("t1", "gm", "wm", "brain_mask")


def grid(spacing: int = 1) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the ATLAS field of view at ``spacing`` mm (1 or 2)."""
    img = template("brain_mask", spacing)
    return tuple(int(s) for s in img.shape), img.affine.copy()  # type: ignore[return-value]


@functools.lru_cache(maxsize=16)
def template(kind: str, spacing: int = 1) -> nib.Nifti1Image:
    """One of ``t1``, ``gm``, ``wm`` (probabilities 0..1) or ``brain_mask`` on the ATLAS grid.

    The returned image holds float32 data (``brain_mask`` 0/1) and must not be modified in place.
    """
    from nilearn import datasets

    if spacing not in (1, 2):
        raise ValueError(f"spacing must be 1 or 2 mm, got {spacing}")
    loaders = {
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
        "brain_mask": datasets.load_mni152_brain_mask,
    }
    if kind not in loaders:
        raise ValueError(f"unknown template {kind!r}; expected one of {', '.join(TEMPLATE_KINDS)}")
    img = loaders[kind](resolution=spacing)
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    if kind == "brain_mask":
        data = (data > 0.5).astype(np.float32)
    out = nib.Nifti1Image(data, img.affine)
    out.set_qform(img.affine, code=4)  # 4 = MNI152
    out.set_sform(img.affine, code=4)
    return out


def template_data(kind: str, spacing: int = 1) -> np.ndarray:
    """Read-only float32 array of :func:`template` (cached)."""
    data = np.asarray(template(kind, spacing).dataobj)
    data.setflags(write=False)
    return data


def spacing_of(affine: np.ndarray) -> int | None:
    """1 or 2 if ``affine`` is the ATLAS field of view at that spacing, else None."""
    for s in (1, 2):
        if np.allclose(affine, grid(s)[1], atol=1e-3):
            return s
    return None


#: Centre (mm, RAS) of the MNI152 2009a T1 template's foreground (checked against the template in the tests).
HEAD_CENTRE_MM = np.array([0.0, -22.0, 9.5])
#: A registered head's centre lies within this distance of :data:`HEAD_CENTRE_MM` (skull, scalp, a missing
#: or defaced part and large lesions move it by a few mm; a scan shifted by 60 mm is far outside).
MAX_CENTRE_OFFSET_MM = 40.0


def head_centre_mm(t1: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """World position (mm) of the centre of the T1w's foreground (voxels above 10 % of its 99th
    percentile; every 2nd voxel per axis is enough), or None for an image without foreground."""
    sub = np.asarray(t1)[::2, ::2, ::2]
    positive = sub[sub > 0]
    if positive.size == 0:
        return None
    idx = np.argwhere(sub > 0.1 * float(np.percentile(positive, 99)))
    if idx.size == 0:
        return None
    affine = np.asarray(affine, dtype=float)
    return affine[:3, :3] @ (idx.mean(axis=0) * 2) + affine[:3, 3]


def check_mni_position(t1: np.ndarray, affine: np.ndarray, path: object) -> None:
    """Refuse (InputError naming ``path``) a T1w whose head lies outside MNI152 space (shifted or not
    registered): its centre more than :data:`MAX_CENTRE_OFFSET_MM` from the template's."""
    from raxnet.errors import InputError

    centre = head_centre_mm(t1, affine)
    if centre is None:
        return  # an empty image is refused by raxnet.io.read_t1
    offset = float(np.linalg.norm(centre - HEAD_CENTRE_MM))
    if offset > MAX_CENTRE_OFFSET_MM:
        raise InputError(
            f"{path}: not in MNI152NLin2009aSym space (the head's centre lies {offset:.0f} mm from the template's: "
            "shifted or not registered); register it to MNI152NLin2009aSym first"
        )

"""Native-space T1w scans to MNI152NLin2009aSym and back, with ANTs (ANTsPy), for ``raxnet predict --register``.

The fixed image is the MNI152 2009a symmetric T1 template that ships with nilearn (:mod:`raxnet.templates`),
skull-stripped; the moving image is the scan as it is (whole head, defaced or not). Every metric is
evaluated only inside a cost-function mask on the template grid: the template brain dilated by a few
mm, so skull, scalp, neck and the missing face do not pull on the registration. Stages, as in
``antsRegistrationSyNQuick.sh`` (the ANTs reference script):

1. rigid, then affine: Mattes mutual information, multi-resolution, intensities winsorised;
2. a lesion estimate: the caller segments the affinely registered scan and hands the lesion back
   (:meth:`Registration.refine`); it is dilated and removed from the cost-function mask. A chronic
   lesion is large, dark and asymmetric; inside the cost function a deformable registration would
   shrink it or fill it with the ventricle to match the template's healthy tissue (Brett et al.,
   NeuroImage 14:486, 2001: cost-function masking);
3. SyN (symmetric diffeomorphic normalisation) on the masked cost function.

The transforms are physical (mm), so the registration runs on a coarse template grid (2 mm by default)
and is applied to any grid: the weights' grid to segment, the scan's own grid to bring the result back.
Every call is an ``antsRegistration`` / ``antsApplyTransforms`` command on files in a temporary folder,
so :attr:`Registration.commands` can be re-run with the ANTs command-line tools.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from raxnet import templates
from raxnet.errors import InputError
from raxnet.log import get_logger

log = get_logger(__name__)

SPACE = "MNI152NLin2009aSym"
#: Our names -> antsApplyTransforms interpolators.
INTERPOLATORS = {"linear": "linear", "nearest": "nearestNeighbor", "bspline": "bSpline", "lanczos": "lanczosWindowedSinc"}
#: RAS+ (NIfTI) <-> LPS+ (ITK) world coordinates.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Settings:
    """How hard to register. The defaults are the measured ones (``bench/bench_registration.py``)."""

    spacing: int = 2  # template grid (mm) the metric is evaluated on
    linear_iterations: tuple[int, ...] = (1000, 500, 250, 0)
    linear_shrink: tuple[int, ...] = (8, 4, 2, 1)
    linear_smoothing: tuple[float, ...] = (3, 2, 1, 0)  # voxels
    syn_iterations: tuple[int, ...] = (100, 70, 50, 0)  # () = affine only
    syn_shrink: tuple[int, ...] = (8, 4, 2, 1)
    syn_smoothing: tuple[float, ...] = (3, 2, 1, 0)
    syn_metric: str = "MI"  # MI (Mattes, 32 bins) or CC (neighbourhood radius 2)
    brain_dilation_mm: float = 6.0  # cost-function mask = template brain dilated by this much
    lesion_dilation_mm: float = 4.0  # ... minus the lesion estimate dilated by this much
    min_correlation: float = 0.5  # below this after the affine stages the scan is refused
    seed: int = 1

    @property
    def deformable(self) -> bool:
        return any(self.syn_iterations)


#: Cheap settings for tests: fewer iterations, no full-resolution level.
FAST = Settings(
    linear_iterations=(200, 100, 0), linear_shrink=(4, 2, 1), linear_smoothing=(2, 1, 0),
    syn_iterations=(30, 10), syn_shrink=(4, 2), syn_smoothing=(2, 1),
)


# --- NIfTI <-> ANTs ------------------------------------------------------------------------------------
def to_ants(data: np.ndarray, affine: np.ndarray) -> Any:
    """An ANTs image of ``data`` on the grid of the NIfTI ``affine`` (RAS+ world mm)."""
    import ants

    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32), origin=tuple(lps[:3, 3]), spacing=tuple(spacing),
        direction=direction,
    )


def _check_orthogonal(affine: np.ndarray, path: Path) -> None:
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if not np.allclose(cols.T @ cols, np.eye(3), atol=1e-4):
        raise InputError(f"{path}: the affine has shear; ANTs images need orthogonal voxel axes (reslice the scan first)")


def check_registrable(data: np.ndarray, img: nib.Nifti1Image, path: Path) -> None:
    """Refuse what cannot be a 3D head scan: a 2D image or a slab thinner than 60 mm in any direction."""
    _check_orthogonal(img.affine, path)
    if min(data.shape) < 2:
        raise InputError(f"{path}: a 2D image (shape {data.shape}); registration needs a 3D T1w volume")
    extent = np.asarray(data.shape) * np.linalg.norm(img.affine[:3, :3], axis=0)
    if extent.min() < 60.0:
        raise InputError(
            f"{path}: field of view {' x '.join(f'{e:.0f}' for e in extent)} mm is too thin for a whole-brain "
            "T1w (registration needs at least 60 mm in every direction)"
        )


def cost_function_mask(settings: Settings, lesion: np.ndarray | None = None, lesion_affine: np.ndarray | None = None) -> np.ndarray:
    """Where the metric is evaluated, on the template grid at ``settings.spacing``: the template brain
    dilated by ``brain_dilation_mm``, minus ``lesion`` (template space, on the grid ``lesion_affine``)
    dilated by ``lesion_dilation_mm``."""
    s = settings.spacing
    brain = templates.template_data("brain_mask", s) > 0.5
    mask = ndimage.distance_transform_edt(~brain, sampling=s) <= settings.brain_dilation_mm
    if lesion is not None and np.any(lesion):
        grid_affine = templates.template("brain_mask", s).affine
        on_grid = _resample_nearest(lesion, lesion_affine if lesion_affine is not None else grid_affine,
                                    brain.shape, grid_affine)
        mask &= ndimage.distance_transform_edt(~on_grid, sampling=s) > settings.lesion_dilation_mm
    return mask


# --- the registration -------------------------------------------------------------------------------------
@dataclass
class Registration:
    """Transforms between one native scan and the template; files live in ``workdir`` until :meth:`close`."""

    native: nib.Nifti1Image
    path: Path
    settings: Settings = field(default_factory=Settings)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="raxnet-reg-")))
    correlation: float = float("nan")  # template vs affinely registered scan, inside the template brain
    seconds: dict[str, float] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.native_shape = tuple(int(s) for s in self.native.shape[:3])
        self._forward: list[str] = []  # native -> template, antsApplyTransforms order
        self._inverse: list[tuple[str, bool]] = []  # template -> native: (file, invert)

    # -- files ------------------------------------------------------------------------------------------
    def _write(self, name: str, data: np.ndarray, affine: np.ndarray) -> str:
        path = self.workdir / f"{name}.nii"  # uncompressed: written and read once, speed over size
        nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
        return str(path)

    def _template_file(self) -> str:
        t1 = templates.template("t1", self.settings.spacing)
        return self._write("template", np.asarray(t1.dataobj), t1.affine)

    def _run(self, args: list[str]) -> None:
        import ants

        args = [str(a) for a in args]
        self.commands.append(["antsRegistration", *args])
        code = ants.registration(args, None)
        if code != 0:
            raise InputError(f"{self.path}: antsRegistration failed (exit code {code})")

    # -- stages -----------------------------------------------------------------------------------------
    def _stage(self, transform: str, metric: str, iterations, shrink, smoothing, mask: str) -> list[str]:
        return [
            "--transform", transform,
            "--metric", metric,
            "--convergence", f"[{'x'.join(map(str, iterations))},1e-6,10]",
            "--shrink-factors", "x".join(map(str, shrink)),
            "--smoothing-sigmas", "x".join(f"{v:g}" for v in smoothing) + "vox",
            "--masks", mask,
        ]

    def _common(self, prefix: str) -> list[str]:
        return [
            "--dimensionality", "3", "--float", "1", "--collapse-output-transforms", "1",
            "--winsorize-image-intensities", "[0.005,0.995]", "--use-histogram-matching", "0",
            "--random-seed", str(self.settings.seed), "--output", prefix,
        ]

    def affine(self, data: np.ndarray) -> None:
        """Rigid then affine stages (centre-of-mass start) and the correlation check."""
        t0 = time.perf_counter()
        s = self.settings
        self._moving = self._write("moving", data, self.native.affine)
        self._fixed = self._template_file()
        grid_affine = templates.template("t1", s.spacing).affine
        self._mask = self._write("cost_mask", cost_function_mask(s), grid_affine)
        prefix = str(self.workdir / "affine_")
        mi = f"MI[{self._fixed},{self._moving},1,32,Regular,0.25]"
        args = self._common(prefix) + ["--initial-moving-transform", f"[{self._fixed},{self._moving},1]"]
        for kind in ("Rigid[0.1]", "Affine[0.1]"):
            args += self._stage(kind, mi, s.linear_iterations, s.linear_shrink, s.linear_smoothing, self._mask)
        self._run(args)
        self._affine_file = prefix + "0GenericAffine.mat"
        self._forward = [self._affine_file]
        self._inverse = [(self._affine_file, True)]
        self.seconds["affine"] = time.perf_counter() - t0
        self.correlation = self._template_correlation(data)
        if not self.correlation >= s.min_correlation:
            raise InputError(
                f"{self.path}: registration to {SPACE} failed or the scan is not a T1w (correlation with the "
                f"template {self.correlation:.2f} after the affine stages, needs >= {s.min_correlation:.2f})"
            )

    def refine(self, lesion: np.ndarray | None = None, lesion_affine: np.ndarray | None = None) -> None:
        """The SyN stage from the affine result, the lesion (template space, any template grid) masked out."""
        s = self.settings
        if not s.deformable:
            return
        t0 = time.perf_counter()
        mask_path = self._mask
        if lesion is not None and np.any(lesion):
            grid_affine = templates.template("t1", s.spacing).affine
            mask_path = self._write("cost_mask_lesion", cost_function_mask(s, lesion, lesion_affine), grid_affine)
        prefix = str(self.workdir / "syn_")
        if s.syn_metric == "CC":
            metric = f"CC[{self._fixed},{self._moving},1,2]"
        else:
            metric = f"MI[{self._fixed},{self._moving},1,32]"
        args = self._common(prefix) + ["--initial-moving-transform", self._affine_file]
        args += self._stage("SyN[0.2,3,0]", metric, s.syn_iterations, s.syn_shrink, s.syn_smoothing, mask_path)
        self._run(args)
        warp, inverse = prefix + "1Warp.nii.gz", prefix + "1InverseWarp.nii.gz"
        self._forward = [warp, self._affine_file]
        self._inverse = [(self._affine_file, True), (inverse, False)]
        self.seconds["syn"] = time.perf_counter() - t0

    # -- applying ---------------------------------------------------------------------------------------
    def to_template(self, data: np.ndarray, shape: Sequence[int], affine: np.ndarray, interpolation: str = "linear") -> np.ndarray:
        """The native ``data`` resampled onto a template-space grid (``shape``, ``affine``)."""
        return self._apply(to_ants(data, self.native.affine), to_ants(np.zeros(shape, np.float32), affine),
                           [(f, False) for f in self._forward], interpolation)

    def to_native(self, volume: np.ndarray, affine: np.ndarray, interpolation: str = "linear") -> np.ndarray:
        """A template-space ``volume`` (grid ``affine``) resampled onto the scan's own grid."""
        ref = to_ants(np.zeros(self.native_shape, np.float32), self.native.affine)
        return self._apply(to_ants(volume, affine), ref, self._inverse, interpolation)

    def _apply(self, moving: Any, reference: Any, transforms: list[tuple[str, bool]], interpolation: str) -> np.ndarray:
        import ants

        out = ants.apply_transforms(
            fixed=reference, moving=moving, transformlist=[f for f, _ in transforms],
            whichtoinvert=[inv for _, inv in transforms], interpolator=INTERPOLATORS[interpolation],
        )
        return out.numpy().astype(np.float32)

    def _template_correlation(self, data: np.ndarray) -> float:
        s = self.settings
        t1 = templates.template("t1", s.spacing)
        moved = self.to_template(data, t1.shape, t1.affine)
        brain = templates.template_data("brain_mask", s.spacing) > 0.5
        a, b = moved[brain], np.asarray(t1.dataobj)[brain]
        if a.std() == 0:
            return 0.0
        return float(np.corrcoef(a, b)[0, 1])

    # -- outputs ----------------------------------------------------------------------------------------
    def save_transforms(self, out_dir: Path, stem: str) -> dict[str, Path]:
        """Copy the forward transform (native -> template; ANTs files) to ``out_dir``.

        ``antsApplyTransforms -i <scan> -r <template> -t <warp> -t <affine>`` brings the scan to the
        template; the affine is ITK's ``.mat`` (MatrixOffsetTransformBase), the warp a displacement field.
        """
        names = {self._affine_file: f"{stem}_from-T1w_to-{SPACE}_mode-image_desc-affine_xfm.mat"}
        if len(self._forward) == 2:
            names[self._forward[0]] = f"{stem}_from-T1w_to-{SPACE}_mode-image_desc-warp_xfm.nii.gz"
        out: dict[str, Path] = {}
        from raxnet.io import atomic_path

        for src, name in names.items():
            with atomic_path(out_dir / name, suffix=Path(src).suffix if src.endswith(".mat") else ".nii.gz") as tmp:
                shutil.copyfile(src, tmp)
            out["affine" if src.endswith(".mat") else "warp"] = out_dir / name
        return out

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Registration":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _resample_nearest(volume: np.ndarray, affine: np.ndarray, shape: Sequence[int], target_affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling between two template-space grids (no transform involved)."""
    if tuple(volume.shape) == tuple(shape) and np.allclose(affine, target_affine, atol=1e-3):
        return np.asarray(volume) > 0
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    src = np.linalg.solve(affine, target_affine)
    coords = ijk @ src[:3, :3].T + src[:3, 3]
    out = ndimage.map_coordinates(np.asarray(volume, np.float32), coords.T, order=0, mode="constant")
    return out.reshape(tuple(shape)) > 0.5

"""Native-space T1w scans to MNI152NLin2009aSym and back, with ANTs (ANTsPy), for ``raxnet predict --register``.

The fixed image is the MNI152 2009a symmetric T1 template that ships with nilearn (:mod:`raxnet.templates`),
skull-stripped; the moving image is the scan as it is (whole head, defaced or not). Every metric is
evaluated only inside a cost-function mask on the template grid, the template brain dilated by a few
mm, so skull, scalp, neck and the missing face do not pull on the registration. The stages follow
``antsRegistrationSyNQuick.sh`` (the ANTs reference script):

1. rigid, then affine (centre-of-mass start; Mattes mutual information, four resolutions, intensities
   winsorised). The scan is resampled onto the weights' grid (cubic B-spline) and segmented once.
2. check: the registered scan must look like the template: the Pearson correlation of the two, both
   smoothed with a 2 mm Gaussian, over the template brain minus the lesion estimate, must reach
   ``min_similarity`` (a wrong modality, a failed registration, a flipped header all fall far below).
3. ``transform = "syn"`` only: SyN (symmetric diffeomorphic normalisation) from the affine result,
   with the lesion estimate (dilated) removed from the cost-function mask. A chronic lesion is large,
   dark and asymmetric; inside the cost function a deformable registration shrinks it or fills it with
   the ventricle to match the template's healthy tissue (cost-function masking: Brett et al.,
   NeuroImage 14:486, 2001). The scan is then segmented again.

The transforms are physical (mm), so the registration runs on a coarse template grid (2 mm) and is
applied to any grid: the weights' grid to segment, the scan's own grid to bring the results back,
the 1 mm template grid for lesion volumes in MNI space. Each registration is an ``antsRegistration``
command line on files in a temporary folder (:attr:`Registration.commands` keeps them, to re-run with the
ANTs tools); ITK runs single-threaded so that a re-run gives the identical transform.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from raxnet import templates
from raxnet.errors import ConfigError, InputError
from raxnet.io import voxel_spacing
from raxnet.log import get_logger

log = get_logger(__name__)

# ITK runs single-threaded unless ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS says otherwise: its multi-threaded
# metric sums change the last digits from run to run, and so the transform (measured: two runs on 2 threads
# gave two different affines, on 1 thread identical ones, 15 % slower). ITK reads the variable when it first
# runs, hence here, before any ANTs call.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

SPACE = "MNI152NLin2009aSym"
TRANSFORMS = ("affine", "syn")
#: Our names -> antsApplyTransforms interpolators.
INTERPOLATORS = {"linear": "linear", "nearest": "nearestNeighbor", "bspline": "bSpline"}
#: RAS+ (NIfTI) <-> LPS+ (ITK) world coordinates.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Settings:
    """How to register. The defaults are the measured ones (``bench/bench_registration.py``)."""

    transform: str = "affine"  # "affine" (rigid + affine) or "syn" (+ lesion-masked SyN)
    spacing: int = 2  # template grid (mm) the metric is evaluated on
    linear_iterations: tuple[int, ...] = (1000, 500, 250, 0)
    linear_shrink: tuple[int, ...] = (8, 4, 2, 1)
    linear_smoothing: tuple[float, ...] = (3, 2, 1, 0)  # voxels
    syn_iterations: tuple[int, ...] = (100, 70, 50, 0)
    syn_shrink: tuple[int, ...] = (8, 4, 2, 1)
    syn_smoothing: tuple[float, ...] = (3, 2, 1, 0)
    syn_metric: str = "MI"  # SyN metric: "MI" (Mattes, 32 bins; antsRegistrationSyNQuick) or "CC" (radius 2)
    brain_dilation_mm: float = 6.0  # cost-function mask = template brain dilated by this much ...
    lesion_dilation_mm: float = 4.0  # ... minus the lesion estimate dilated by this much (SyN)
    min_similarity: float = 0.5  # below this the scan is refused (see the module docstring)
    seed: int = 1  # antsRegistration --random-seed (its metric sampling)

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"registration transform must be one of {', '.join(TRANSFORMS)}, got {self.transform!r}")
        if self.syn_metric not in ("MI", "CC"):
            raise ValueError(f"SyN metric must be MI or CC, got {self.syn_metric!r}")


#: Cheap settings for tests: fewer iterations, no full-resolution level.
FAST = Settings(
    linear_iterations=(200, 100, 0), linear_shrink=(4, 2, 1), linear_smoothing=(2, 1, 0),
    syn_iterations=(30, 10), syn_shrink=(4, 2), syn_smoothing=(2, 1),
)


# --- NIfTI <-> ANTs ------------------------------------------------------------------------------------
def _ants() -> Any:
    """ANTsPy, or a one-line error saying how to install it.

    """
    try:
        import ants
    except ImportError:
        raise ConfigError(
            "--register needs ANTsPy: pip install --no-deps -r requirements-antspyx.txt (see README, Scans in native space)"
        ) from None
    return ants


def to_ants(data: np.ndarray, affine: np.ndarray) -> Any:
    """An ANTs image of ``data`` on the grid of the NIfTI ``affine`` (RAS+ world mm; ANTs works in LPS+)."""
    ants = _ants()

    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32), origin=tuple(lps[:3, 3]),
                           spacing=tuple(spacing), direction=lps[:3, :3] / spacing)


def check_registrable(data: np.ndarray, img: nib.Nifti1Image, path: Path) -> None:
    """Refuse what cannot be registered as a head: a 2D image, a slab thinner than 60 mm, a sheared grid."""
    if min(data.shape) < 2:
        raise InputError(f"{path}: a 2D image (shape {data.shape}); registration needs a 3D T1w volume")
    cols = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
    if not np.allclose(cols.T @ cols, np.eye(3), atol=1e-4):
        raise InputError(f"{path}: the affine has shear; ANTs needs orthogonal voxel axes (reslice the scan first)")
    extent = np.asarray(data.shape) * np.asarray(voxel_spacing(img.affine))
    if extent.min() < 60.0:
        raise InputError(
            f"{path}: field of view {' x '.join(f'{e:.0f}' for e in extent)} mm is too thin for a whole-brain "
            "T1w (registration needs at least 60 mm in every direction)"
        )


def _resample_nearest(volume: np.ndarray, affine: np.ndarray, shape: Sequence[int], target_affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling between two template-space grids (no transform involved)."""
    if tuple(volume.shape) == tuple(shape) and np.allclose(affine, target_affine, atol=1e-3):
        return np.asarray(volume) > 0
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    src = np.linalg.solve(affine, target_affine)
    coords = ijk @ src[:3, :3].T + src[:3, 3]
    out = ndimage.map_coordinates(np.asarray(volume, np.float32), coords.T, order=0, mode="constant")
    return out.reshape(tuple(shape)) > 0.5


def _without_lesion(mask: np.ndarray, spacing: int, lesion: np.ndarray | None, lesion_affine: np.ndarray | None,
                    dilation_mm: float) -> np.ndarray:
    if lesion is None or not np.any(lesion):
        return mask
    grid_affine = templates.template("brain_mask", spacing).affine
    on_grid = _resample_nearest(lesion, grid_affine if lesion_affine is None else lesion_affine, mask.shape, grid_affine)
    return mask & (ndimage.distance_transform_edt(~on_grid, sampling=spacing) > dilation_mm)


def cost_function_mask(settings: Settings, lesion: np.ndarray | None = None, lesion_affine: np.ndarray | None = None) -> np.ndarray:
    """Where the metric is evaluated, on the template grid at ``settings.spacing``: the template brain
    dilated by ``brain_dilation_mm``, minus ``lesion`` (template space, on the grid ``lesion_affine``)
    dilated by ``lesion_dilation_mm``."""
    s = settings.spacing
    brain = templates.template_data("brain_mask", s) > 0.5
    mask = ndimage.distance_transform_edt(~brain, sampling=s) <= settings.brain_dilation_mm
    return _without_lesion(mask, s, lesion, lesion_affine, settings.lesion_dilation_mm)


def similarity(moved: np.ndarray, settings: Settings, lesion: np.ndarray | None = None,
               lesion_affine: np.ndarray | None = None) -> float:
    """Correlation of a scan on the template grid (``settings.spacing``) with the template: both smoothed
    (2 mm Gaussian), over the template brain minus the lesion estimate dilated by ``lesion_dilation_mm``."""
    s = settings.spacing
    brain = templates.template_data("brain_mask", s) > 0.5
    where = _without_lesion(brain, s, lesion, lesion_affine, settings.lesion_dilation_mm)
    a = ndimage.gaussian_filter(np.asarray(moved, np.float32), 2.0 / s)[where]
    b = ndimage.gaussian_filter(templates.template_data("t1", s), 2.0 / s)[where]
    if a.size < 2 or a.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


# --- the registration -------------------------------------------------------------------------------------
@dataclass
class Registration:
    """Transforms between one native scan and the template; files live in ``workdir`` until :meth:`close`."""

    native: nib.Nifti1Image
    path: Path
    settings: Settings = field(default_factory=Settings)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="raxnet-reg-")))
    similarity: float = float("nan")
    seconds: dict[str, float] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.native_shape = tuple(int(v) for v in self.native.shape[:3])
        # The temporary files go when the registration does, even if nobody calls close().
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.workdir), True)
        self._forward: list[str] = []  # native -> template, antsApplyTransforms order (last applied first)
        self._inverse: list[tuple[str, bool]] = []  # template -> native: (file, invert)

    def _clock(self, key: str, t0: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

    def _write(self, name: str, data: np.ndarray, affine: np.ndarray) -> str:
        path = self.workdir / f"{name}.nii"  # uncompressed: written and read once, speed over size
        nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
        return str(path)

    def _run(self, args: list[str]) -> None:
        ants = _ants()

        self.commands.append(["antsRegistration", *args])
        code = ants.registration(list(args), None)  # a list: the antsRegistration command line as is
        if code != 0:
            raise InputError(f"{self.path}: antsRegistration failed (exit code {code})")

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
        """Rigid then affine stages from a centre-of-mass alignment."""
        t0 = time.perf_counter()
        s = self.settings
        grid_affine = templates.template("t1", s.spacing).affine
        self._moving = self._write("moving", data, self.native.affine)
        self._fixed = self._write("template", templates.template_data("t1", s.spacing), grid_affine)
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
        self._clock("registration", t0)

    def check(self, data: np.ndarray, lesion: np.ndarray | None = None, lesion_affine: np.ndarray | None = None) -> float:
        """:func:`similarity` of the registered scan; raises InputError below ``min_similarity``."""
        t0 = time.perf_counter()
        s = self.settings
        moved = self.to_template(data, *templates.grid(s.spacing), interpolation="linear")
        self.similarity = similarity(moved, s, lesion, lesion_affine)
        self._clock("registration", t0)
        if not self.similarity >= s.min_similarity:
            raise InputError(
                f"{self.path}: cannot be registered to {SPACE} (similarity to the T1w template {self.similarity:.2f} "
                f"after the affine stages, needs >= {s.min_similarity:.2f}): not a T1w head scan, or its header "
                "orientation is wrong"
            )
        return self.similarity

    def refine(self, lesion: np.ndarray | None = None, lesion_affine: np.ndarray | None = None) -> None:
        """The SyN stage from the affine result, the lesion (template space) out of the cost function."""
        t0 = time.perf_counter()
        s = self.settings
        mask = self._mask
        if lesion is not None and np.any(lesion):
            grid_affine = templates.template("t1", s.spacing).affine
            mask = self._write("cost_mask_lesion", cost_function_mask(s, lesion, lesion_affine), grid_affine)
        prefix = str(self.workdir / "syn_")
        args = self._common(prefix) + ["--initial-moving-transform", self._affine_file]
        metric = f"{s.syn_metric}[{self._fixed},{self._moving},1,{32 if s.syn_metric == 'MI' else 2}]"
        args += self._stage("SyN[0.2,3,0]", metric, s.syn_iterations, s.syn_shrink, s.syn_smoothing, mask)
        self._run(args)
        self._forward = [prefix + "1Warp.nii.gz", self._affine_file]
        self._inverse = [(self._affine_file, True), (prefix + "1InverseWarp.nii.gz", False)]
        self._clock("registration", t0)

    @property
    def forward_transforms(self) -> list[str]:
        """The transform files that bring the scan onto the template, in antsApplyTransforms order."""
        return list(self._forward)

    # -- applying ---------------------------------------------------------------------------------------
    def to_template(self, data: np.ndarray, shape: Sequence[int], affine: np.ndarray, interpolation: str = "bspline") -> np.ndarray:
        """The native ``data`` resampled onto a template-space grid (``shape``, ``affine``)."""
        out = self._apply(to_ants(data, self.native.affine), to_ants(np.zeros(tuple(shape), np.float32), affine),
                          [(f, False) for f in self._forward], interpolation)
        return np.clip(out, 0.0, None) if interpolation == "bspline" else out  # no negative overshoot

    def to_native(self, volume: np.ndarray, affine: np.ndarray, interpolation: str = "linear") -> np.ndarray:
        """A template-space ``volume`` (grid ``affine``) resampled onto the scan's own grid."""
        t0 = time.perf_counter()
        ref = to_ants(np.zeros(self.native_shape, np.float32), self.native.affine)
        out = self._apply(to_ants(volume, affine), ref, self._inverse, interpolation)
        self._clock("mapping", t0)
        return out

    def _apply(self, moving: Any, reference: Any, transforms: list[tuple[str, bool]], interpolation: str) -> np.ndarray:
        ants = _ants()

        out = ants.apply_transforms(fixed=reference, moving=moving, transformlist=[f for f, _ in transforms],
                                    whichtoinvert=[inv for _, inv in transforms],
                                    interpolator=INTERPOLATORS[interpolation])
        return out.numpy().astype(np.float32)

    # -- outputs ----------------------------------------------------------------------------------------
    def save_transforms(self, out_dir: Path, stem: str) -> list[Path]:
        """The forward transform (scan -> template) as ANTs files in ``out_dir``.

        ``antsApplyTransforms -i scan.nii.gz -r <template> [-t <warp>] -t <affine>`` brings the scan (or
        anything on its grid) to the template: the affine is ITK's ``.mat`` (AffineTransform), the warp a
        displacement field (``--transform syn`` only).
        """
        from raxnet.io import atomic_path

        out = []
        for src in self._forward:
            kind, ext = ("affine", ".mat") if src.endswith(".mat") else ("warp", ".nii.gz")
            dest = out_dir / f"{stem}_from-T1w_to-{SPACE}_desc-{kind}_xfm{ext}"
            with atomic_path(dest, suffix=ext) as tmp:
                shutil.copyfile(src, tmp)
            out.append(dest)
        return out

    def close(self) -> None:
        self._cleanup()

    def __enter__(self) -> "Registration":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


Segmenter = Callable[[np.ndarray], tuple[Any, np.ndarray]]


def register_and_segment(
    data: np.ndarray, img: nib.Nifti1Image, path: Path, grid_shape: Sequence[int], grid_affine: np.ndarray,
    segment: Segmenter, settings: Settings | None = None,
) -> tuple[Registration, Any, np.ndarray]:
    """Register a native scan, segment it on the weights' grid with ``segment(volume) -> (result, mask)``
    (the mask a lesion estimate on that grid) and return ``(registration, result, mask)``.

    The registration's temporary files go with it (or with :meth:`Registration.close`).
    """
    settings = settings or Settings()
    check_registrable(data, img, path)
    _ants()  # refuse before any work when ANTsPy is missing
    reg = Registration(img, path, settings)

    def on_grid() -> np.ndarray:
        t0 = time.perf_counter()
        out = reg.to_template(data, grid_shape, grid_affine)
        reg._clock("registration", t0)
        return out

    try:
        reg.affine(data)
        result, mask = segment(on_grid())
        reg.check(data, mask, grid_affine)
        if settings.transform == "syn":
            reg.refine(mask, grid_affine)
            result, mask = segment(on_grid())
    except BaseException:
        reg.close()
        raise
    return reg, result, mask


def lesion_table(mask: np.ndarray, reg: Registration, connectivity: int) -> pd.DataFrame:
    """``lesions.csv`` for a registered scan: one row per lesion of the native ``mask`` (largest first).

    ``voxels, volume_mm3, centroid_{x,y,z}_mm`` are the scan's own (scanner mm); every lesion is also
    mapped onto the 1 mm template grid (nearest neighbour) for ``volume_mni_mm3``, ``mni_{x,y,z}_mm``
    and the anatomy (``cortical_fraction, hemisphere, location``), which only MNI space can tell.
    """
    from raxnet import lesions

    t0 = time.perf_counter()
    native = lesions.component_table(mask, reg.native.affine, connectivity=connectivity, reference=False)
    labels, sizes = lesions.components(mask, connectivity)
    n = int(sizes.size)
    shape, affine = templates.grid(1)
    mni_labels = np.rint(reg.to_template(labels.astype(np.float32), shape, affine, "nearest")).astype(np.int32)
    mni = lesions.label_table(mni_labels, n, affine)
    reg.seconds["mapping"] = reg.seconds.get("mapping", 0.0) + time.perf_counter() - t0
    if n == 0:
        return native.reindex(columns=LESION_COLUMNS)
    out = native.drop(columns=["cortical_fraction", "hemisphere", "location"])
    out["volume_mni_mm3"] = mni["volume_mm3"].to_numpy()
    for axis in "xyz":
        out[f"mni_{axis}_mm"] = mni[f"centroid_{axis}_mm"].to_numpy()
    for col in ("cortical_fraction", "hemisphere", "location"):
        out[col] = mni[col].to_numpy()
    lost = mni["voxels"].to_numpy() == 0  # smaller than the template grid's sampling: no anatomy to report
    out.loc[lost, ["hemisphere", "location"]] = "n/a"
    return out[LESION_COLUMNS]


LESION_COLUMNS = [
    "label", "voxels", "volume_mm3", "volume_mni_mm3", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "mni_x_mm", "mni_y_mm", "mni_z_mm", "cortical_fraction", "hemisphere", "location",
]  # fmt: skip


def write_outputs(reg: Registration, data: np.ndarray, lesions: pd.DataFrame, out_dir: Path, stem: str,
                  qc: bool) -> dict[str, Any]:
    """The transform files and (``qc``) the registration QC PNG; returns the summary's registration columns."""
    xfms = reg.save_transforms(out_dir, stem)
    if qc:
        qc_figure(reg, data, out_dir / f"{stem}_desc-registration_qc.png",
                  f"{stem} -> {SPACE} ({reg.settings.transform}; similarity {reg.similarity:.2f})")
    return {
        "lesion_volume_mni_mm3": round(float(lesions["volume_mni_mm3"].sum()), 3) if len(lesions) else 0.0,
        "registration": reg.settings.transform,
        "similarity": round(reg.similarity, 4),
        "transforms": ";".join(str(x) for x in xfms),
        "seconds_registration": round(reg.seconds.get("registration", 0.0), 2),
        "seconds_mapping": round(reg.seconds.get("mapping", 0.0), 2),
    }


def qc_figure(reg: Registration, data: np.ndarray, path: Path, title: str) -> Path:
    """Registration QC PNG: the scan on the 1 mm template grid with the template's edges over it."""
    from raxnet.qc import registration_overlay

    t0 = time.perf_counter()
    shape, affine = templates.grid(1)
    moved = reg.to_template(data, shape, affine, "linear")
    out = registration_overlay(moved, templates.template_data("t1", 1), templates.template_data("brain_mask", 1) > 0.5,
                               affine, path, title=title)
    reg.seconds["mapping"] = reg.seconds.get("mapping", 0.0) + time.perf_counter() - t0
    return out

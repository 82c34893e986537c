"""Connected components: the one definition of "a lesion" and of its neighbourhoods.

A lesion is a connected component of a binary mask. Which voxels touch is a setting with one purpose
each, all defaulting to the constants here so that every stage counts the same lesions in the same mask:

``LESION_CONNECTIVITY`` (26: faces, edges and corners)
    3D lesions everywhere they are counted or removed: stage 01's lesion tables (``[dataset].connectivity``),
    stage 08's detection metrics (lesion-wise F1, lesion-count difference) and small-lesion removal
    (``[fusion].connectivity``), and ``raxnet predict``'s ``lesions.csv`` and clean-up (the weight set's
    ``connectivity``). 26 is what the ATLAS R2.0 / ISLES 2022 challenge scoring uses
    (``cc3d.connected_components(..., connectivity=26)`` in ``compute_lesion_f1_score``).
``SLICE_CONNECTIVITY`` (8)
    2D lesions per slice (stage 01's per-slice tables, ``[dataset].slice_connectivity``).
``SURFACE_CONNECTIVITY`` (6: faces)
    the erosion that defines a mask's surface for HD95 (:mod:`raxnet.metrics`), as medpy's ``hd95``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

LESION_CONNECTIVITY = 26
SLICE_CONNECTIVITY = 8
SURFACE_CONNECTIVITY = 6

_RANKS = {3: {6: 1, 18: 2, 26: 3}, 2: {4: 1, 8: 2}}


def structure(connectivity: int = LESION_CONNECTIVITY, ndim: int = 3) -> np.ndarray:
    """Neighbourhood for ``connectivity`` 6, 18 or 26 in 3D (4 or 8 in 2D)."""
    ranks = _RANKS.get(ndim)
    if ranks is None:
        raise ValueError(f"connectivity is defined for 2D and 3D masks, not {ndim}D")
    if int(connectivity) not in ranks:
        *first, last = sorted(ranks)
        raise ValueError(f"{ndim}D connectivity must be {', '.join(map(str, first))} or {last}, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, ranks[int(connectivity)])


def label(mask: np.ndarray, connectivity: int = LESION_CONNECTIVITY) -> tuple[np.ndarray, int]:
    """Connected components of a binary mask (any non-zero value is foreground): ``(labels, count)``."""
    m = np.asarray(mask) != 0
    labels, n = ndimage.label(m, structure=structure(connectivity, m.ndim))
    return labels, int(n)

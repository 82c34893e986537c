"""raxnet.templates: the MNI152 grids and the check that a head lies in MNI space."""

import numpy as np
import pytest

from raxnet import templates
from raxnet.errors import InputError


def test_head_centre_matches_the_template_and_a_shifted_head_is_refused():
    """templates.HEAD_CENTRE_MM is the MNI152 T1's foreground centre; a head 60 mm off is refused."""
    for spacing in (1, 2):
        shape, affine = templates.grid(spacing)
        t1 = np.asarray(templates.template_data("t1", spacing))
        np.testing.assert_allclose(templates.head_centre_mm(t1, affine), templates.HEAD_CENTRE_MM, atol=1.0)
    templates.check_mni_position(t1, affine, "ok.nii.gz")
    assert templates.head_centre_mm(np.zeros((4, 4, 4)), affine) is None
    for axis in range(3):
        for sign in (1, -1):
            shifted = affine.copy()
            shifted[axis, 3] += sign * 60
            with pytest.raises(InputError, match="shifted.nii.gz: not in MNI152NLin2009aSym space"):
                templates.check_mni_position(t1, shifted, "shifted.nii.gz")
    shifted = affine.copy()
    shifted[:3, 3] += 15  # a small misregistration is not refused
    templates.check_mni_position(t1, shifted, "near.nii.gz")

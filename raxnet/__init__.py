"""RAX-Net: Residual Attention Xception segmentation of chronic stroke lesions (ATLAS v2.0).

All pipeline logic lives in this package; the numbered stage folders hold thin scripts that call it.
"""

__version__ = "0.1.0"

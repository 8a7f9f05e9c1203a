"""Deprecated alias of :mod:`ugmm_prob.arviz_export` (the ArviZ export), kept so that
``from ugmm_prob.diagnostics import to_inference_data`` keeps working; importing it warns."""

import warnings

from .arviz_export import to_inference_data

__all__ = ["to_inference_data"]

warnings.warn(
    "ugmm_prob.diagnostics is deprecated: it is the ArviZ export, now ugmm_prob.arviz_export "
    "(from ugmm_prob.arviz_export import to_inference_data)",
    DeprecationWarning,
    stacklevel=2,
)

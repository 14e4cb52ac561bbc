"""Image views: seeded, size-preserving perturbations of the decoded RGB image."""

from perceptrl.vision.views import (
    DDPM_STEPS,
    VIEW_NAMES,
    View,
    clean,
    ddpm,
    ddpm_coefficients,
    ddpm_t_from_level,
    gaussian,
    make_view,
    mask_patches,
    view_seed,
    vogue,
)

__all__ = [
    "DDPM_STEPS",
    "VIEW_NAMES",
    "View",
    "clean",
    "ddpm",
    "ddpm_coefficients",
    "ddpm_t_from_level",
    "gaussian",
    "make_view",
    "mask_patches",
    "view_seed",
    "vogue",
]

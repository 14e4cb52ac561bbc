"""Image views: seeded perturbations of the decoded RGB image (ALGORITHMS.md section 9).

A *view* acts on the decoded image **before** the model's processor and keeps its size, so the
processor resizes it exactly like the clean image and the image-token count is unchanged.
Every view draws its randomness from a ``numpy.random.Generator`` that the caller seeds per
(prompt, step) with :func:`view_seed`, so a run is reproducible.

Functional forms take ``(image, rng, ...)``; ``image`` may be

* a ``PIL.Image`` (any mode; converted to RGB, transparency composited onto white as the
  Hugging Face image processors do) -> returns a ``PIL.Image`` in mode ``RGB`` of the same size;
* a float array ``H x W x 3`` with values in ``[0, 1]`` (also ``H x W``, ``H x W x 1`` or
  ``H x W x 4``) -> returns a ``float32`` array ``H x W x 3``;
* a ``uint8`` array of those shapes -> returns a ``uint8`` array ``H x W x 3``.

Pixels are brought to ``[0, 1]`` as ``u8 / 255`` and back as ``round(x * 255)``. (The reference
implementations truncate on the way back -- ``torchvision``'s ``ToPILImage`` and
``(x * 255).astype(np.uint8)`` -- which darkens an image by half a grey level on average; we round.)

What the public reference code does, view by view (checked for this module):

``mask_patches`` -- PAPO, ``MikeWangWZHL/PAPO:verl/trainer/papo_utils.py`` ``random_patch_blackening``
    (the upstream file is not in our index; read from the verbatim copy that keeps PAPO's
    licence header, ``PeanutInMay/PAPO-V:verl/trainer/papo_utils.py``, and called from
    ``MikeWangWZHL/PAPO:verl/trainer/ray_trainer.py`` ``_aug_img_for_kl_prcp``). It loops over
    the raw image in row-major order, ``for y in range(0, h, 14): for x in range(0, w, 14)``, and
    blackens each square independently ``if np.random.rand() < black_prob`` (0.6): a per-patch
    **Bernoulli** draw, not an exact fraction, so the masked fraction varies from image to image.
    Edge squares are truncated (``min(y + 14, h)``), the fill is 0 in every channel, the image is
    not resized. The mask is drawn once per prompt in ``_make_batch_data`` before the batch is
    repeated for the ``n`` rollouts, so the rollouts of a prompt share it. We draw the same
    row-major grid of Bernoulli variables in one vectorised call.

``ddpm`` -- ``NUS-TRAIL/NoisyRollout:verl/utils/image_aug.py`` (``_add_gaussian_noise``) and
    ``Artanic30/NoisyGRPO:src/open-r1-multimodal/src/open_r1/noisy_grpo.py``
    (``add_diffusion_noise_pil``) both build ``betas = sigmoid(linspace(-6, 6, 1000)) *
    (0.5e-2 - 1e-5) + 1e-5``, ``alphas_prod = cumprod(1 - betas)`` and index
    ``sqrt(alphas_prod)[t]``, ``sqrt(1 - alphas_prod)[t]`` with **0-based** ``t`` (``abar[t]``,
    not ``abar[t - 1]``): that is what reproduces the check values (t=500 gives 0.863 with
    ``abar[t]``, 0.864 with ``abar[t - 1]``), so ``t = 0`` already adds noise of std 0.0047.
    Both act on ``ToTensor()`` pixels in ``[0, 1]``. NoisyRollout clamps to ``[0, 1]`` before
    ``ToPILImage``; NoisyGRPO does **not** clamp before ``ToPILImage`` (whose ``mul(255).byte()``
    then wraps out-of-range values); we always clamp. NoisyRollout uses
    ``t = int(gaussian_noise_step * decay)`` (the caller computes ``t = int(500 * eta)``);
    NoisyGRPO uses ``t = int(n * 1000)`` for each ladder level ``n``, including ``n = 0``, so its
    "clean" level carries the t=0 noise too (use the ``clean`` view for an exactly clean image).

``gaussian`` -- as in ``ruiiu/DUPL:verl/models/uncertainty/perceptual_uncertainty.py``
    ``add_gaussian_noise``: ``x / 255 + N(0, std^2)``, ``np.clip(., 0, 1)``.

``vogue`` -- ``ruiiu/DUPL:verl/models/uncertainty/perceptual_uncertainty.py`` (same code in
    ``visual_uncertainty.py``), ``create_augmented_image``: ``transforms.Compose([
    RandomHorizontalFlip(), RandomVerticalFlip(), RandomRotation(degrees=10),
    ColorJitter(brightness=s * 0.15, contrast=s * 0.15, saturation=0.0, hue=0.0)])`` then
    ``add_gaussian_noise`` with std ``gaussian_noise_std * s``; released scripts set the strength
    ``s = 1.0`` and ``gaussian_noise_std = 0.2`` (``examples/dupl_7b.sh``). So: each flip with
    probability 0.5 (torchvision's default), angle ``~ U(-10, 10)`` degrees, nearest-neighbour,
    ``expand=False`` (size kept), corners filled with 0 (black); brightness and contrast factors
    ``~ U(0.85, 1.15)`` applied in a random order (``ColorJitter`` permutes its ops), brightness
    ``x * b``, contrast ``mean + c * (x - mean)`` with ``mean`` the mean luma of the image,
    each clipped to ``[0, 1]``; then Gaussian noise. In the released trainer
    (``ruiiu/DUPL:verl/workers/fsdp_workers.py`` ``_get_augmented_log_probs``) ``T(x)`` is drawn
    afresh for every row of the batch (i.e. every rollout), after the image was resized to the
    processor's pixel budget. Differences here: our random numbers come from numpy, not torch;
    jitter is computed in float without re-quantising between the ops; the luma mean is not
    rounded to an integer grey level as PIL's ``ImageEnhance.Contrast`` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Callable

import numpy as np
from PIL import Image

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

DDPM_STEPS = 1000
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as PIL's "L" mode


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy; transparency is composited onto white (as ``transformers``' ``convert_to_rgb``)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_array(image: Any) -> tuple[np.ndarray, str]:
    """``(array H x W x 3, kind)``; kind is ``pil`` or ``uint8`` (uint8 array) or ``float``."""
    if isinstance(image, Image.Image):
        return np.asarray(_pil_to_rgb(image)), "pil"
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected an image array H x W x {{1, 3, 4}}, got shape {np.shape(image)}")
    if arr.dtype == np.uint8:
        kind = "uint8"
        if arr.shape[2] == 3:
            return arr, kind
        work = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        kind = "float"
        work = arr.astype(np.float32, copy=False)
        lo, hi = float(work.min()), float(work.max())
        if not (lo >= -1e-6 and hi <= 1.0 + 1e-6):  # also catches NaN
            raise ValueError(f"float images must lie in [0, 1]; got values in [{lo}, {hi}]")
    else:
        raise TypeError(f"image arrays must be uint8 or float, got {arr.dtype}")
    if work.shape[2] == 1:
        work = np.repeat(work, 3, axis=2)
    elif work.shape[2] == 4:
        alpha = work[:, :, 3:4]
        work = work[:, :, :3] * alpha + (1.0 - alpha)  # composite onto white
    if kind == "uint8":
        return _quantize(work), kind
    return np.ascontiguousarray(work, dtype=np.float32), kind


def _as_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1.0 / 255.0)
    return arr.astype(np.float32, copy=True)


def _quantize(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _from_array(arr: np.ndarray, kind: str) -> Any:
    """Back to the caller's kind; ``arr`` is uint8 or float (in [0, 1])."""
    if kind == "float":
        return arr.astype(np.float32, copy=False) if arr.dtype != np.uint8 else _as_float(arr)
    u8 = arr if arr.dtype == np.uint8 else _quantize(arr)
    if kind == "pil":
        return Image.fromarray(np.ascontiguousarray(u8), mode="RGB")
    return np.ascontiguousarray(u8)


def _as_rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer, np.random.SeedSequence)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise TypeError(f"expected a seed (int) or a numpy Generator, got {type(rng).__name__}")


# --------------------------------------------------------------------------------------------
# Views (functional forms)
# --------------------------------------------------------------------------------------------


def clean(image: Any, rng: Any = None) -> Any:
    """Identity (converted to RGB; a new object). ``rng`` is accepted and ignored."""
    arr, kind = _to_array(image)
    return _from_array(arr.copy(), kind)


def mask_patches(image: Any, rng: Any, patch: int = 14, p: float = 0.6, fill: float = 0.0) -> Any:
    """PAPO's masked view: tile into ``patch x patch`` squares, each filled with prob. ``p``.

    Squares start at multiples of ``patch`` from the top-left corner; squares on the right and
    bottom edges are truncated. Each square is an independent Bernoulli(``p``) draw (as the
    released code: the masked fraction is ``p`` only on average). ``fill`` is an intensity in
    ``[0, 1]`` (0 = black, PAPO), or three of them. Grid draws are row-major: ``rng.random((ny, nx))``.
    """
    _check_int("patch", patch, 1)
    _check_prob("p", p)
    fill_arr = np.asarray(fill, dtype=np.float32).reshape(-1)
    if fill_arr.size not in (1, 3) or not np.all((fill_arr >= 0) & (fill_arr <= 1)):
        raise ValueError(f"fill must be one or three intensities in [0, 1], got {fill!r}")
    rng = _as_rng(rng)
    arr, kind = _to_array(image)
    h, w = arr.shape[:2]
    ny, nx = -(-h // patch), -(-w // patch)
    grid = rng.random((ny, nx)) < p
    out = arr.copy()
    if grid.any():
        mask = np.repeat(np.repeat(grid, patch, axis=0), patch, axis=1)[:h, :w]
        value = _quantize(fill_arr) if out.dtype == np.uint8 else fill_arr
        out[mask] = value
    return _from_array(out, kind)


def gaussian(image: Any, rng: Any, sigma: float) -> Any:
    """``clip(x + N(0, sigma^2), 0, 1)`` on pixels ``x`` in ``[0, 1]``, independent per channel."""
    _check_nonneg("sigma", sigma)
    rng = _as_rng(rng)
    arr, kind = _to_array(image)
    return _from_array(_gaussian_float(_as_float(arr), rng, sigma), kind)


def _gaussian_float(x: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    if sigma == 0:
        return x
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    noise *= np.float32(sigma)
    x += noise
    np.clip(x, 0.0, 1.0, out=x)
    return x


@lru_cache(maxsize=1)
def _ddpm_table() -> tuple[np.ndarray, np.ndarray]:
    betas = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, DDPM_STEPS))) * (5e-3 - 1e-5) + 1e-5
    abar = np.cumprod(1.0 - betas)
    signal, noise = np.sqrt(abar), np.sqrt(1.0 - abar)
    signal.setflags(write=False)
    noise.setflags(write=False)
    return signal, noise


def ddpm_coefficients(t: int) -> tuple[float, float]:
    """``(sqrt(abar_t), sqrt(1 - abar_t))`` for 0-based ``t`` in ``[0, 999]``.

    ``betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5``, ``abar = cumprod(1 - betas)``,
    indexed ``abar[t]`` as NoisyRollout and NoisyGRPO do. t=0 -> (1.000, 0.0047); t=300 ->
    (0.981, 0.194); t=500 -> (0.863, 0.505); t=600 -> (0.734, 0.679); t=900 -> (0.365, 0.931).
    """
    t = _check_t(t)
    signal, noise = _ddpm_table()
    return float(signal[t]), float(noise[t])


def ddpm_t_from_level(noise_level: float) -> int:
    """NoisyGRPO's step for a ladder level: ``int(noise_level * 1000)``, capped at 999.

    (Level 1.0 would index step 1000, past the end of the 1000-step schedule, in their code.)
    NoisyRollout's ``t = int(500 * eta)`` is the caller's to compute.
    """
    _check_prob("noise_level", noise_level)
    return min(int(noise_level * DDPM_STEPS), DDPM_STEPS - 1)


def ddpm(image: Any, rng: Any, t: int) -> Any:
    """DDPM forward noise: ``clip(sqrt(abar_t) x + sqrt(1 - abar_t) eps, 0, 1)``, ``x`` in [0, 1].

    ``t`` is 0-based in ``[0, 999]`` (see :func:`ddpm_coefficients`); ``t = 0`` is not the
    identity (noise std 0.0047, about 1.2 grey levels). We clamp to ``[0, 1]`` before converting
    back, as NoisyRollout does; NoisyGRPO's code does not clamp before conversion (out-of-range
    values wrap around in ``ToPILImage``), ours does.
    """
    signal, noise = ddpm_coefficients(t)
    rng = _as_rng(rng)
    arr, kind = _to_array(image)
    x = _as_float(arr)
    eps = rng.standard_normal(x.shape, dtype=np.float32)
    x *= np.float32(signal)
    eps *= np.float32(noise)
    x += eps
    np.clip(x, 0.0, 1.0, out=x)
    return _from_array(x, kind)


def _rotate_nearest(arr: np.ndarray, angle: float, fill: float = 0.0) -> np.ndarray:
    """Rotate ``angle`` degrees counter-clockwise about the centre, size kept, nearest neighbour.

    Same geometry as ``PIL.Image.rotate(angle, NEAREST, expand=False)`` (what torchvision's
    ``RandomRotation`` calls on PIL images): we rotate an index image with PIL and gather, which
    works for uint8 and float pixels alike. Uncovered pixels get ``fill``.
    """
    if angle % 360 == 0:
        return arr.copy()
    h, w = arr.shape[:2]
    index = Image.fromarray(np.arange(h * w, dtype=np.int32).reshape(h, w), mode="I")
    src = np.asarray(index.rotate(angle, resample=Image.Resampling.NEAREST, expand=False, fillcolor=-1))
    src = src.reshape(-1)
    flat = arr.reshape(h * w, -1)
    out = flat[np.maximum(src, 0)]
    outside = src < 0
    if outside.any():
        out[outside] = _quantize(np.float32(fill)) if arr.dtype == np.uint8 else fill
    return out.reshape(arr.shape)


def vogue(
    image: Any,
    rng: Any,
    sigma: float,
    *,
    flip_p: float = 0.5,
    max_degrees: float = 10.0,
    brightness: float = 0.15,
    contrast: float = 0.15,
) -> Any:
    """DUPL/VOGUE's ``T(x)``: flips, rotation, brightness/contrast jitter, then ``gaussian(sigma)``.

    Defaults follow ``ruiiu/DUPL`` (strength 1.0): horizontal then vertical flip, each with
    probability ``flip_p``; rotation by ``U(-max_degrees, max_degrees)`` degrees (nearest, size
    kept, black corners); brightness factor ``U(1 - brightness, 1 + brightness)`` and contrast factor
    ``U(1 - contrast, 1 + contrast)`` applied in random order (each clipped to [0, 1]); then
    ``clip(x + N(0, sigma^2), 0, 1)``. Paper ``sigma = 0.4``, released scripts ``0.2``.
    Random numbers are drawn in a fixed order whatever the image, so a seed fixes the transform.
    """
    _check_nonneg("sigma", sigma)
    _check_prob("flip_p", flip_p)
    _check_nonneg("max_degrees", max_degrees)
    _check_nonneg("brightness", brightness)
    _check_nonneg("contrast", contrast)
    rng = _as_rng(rng)
    hflip = rng.random() < flip_p
    vflip = rng.random() < flip_p
    angle = float(rng.uniform(-max_degrees, max_degrees))
    b = float(rng.uniform(max(0.0, 1.0 - brightness), 1.0 + brightness))
    c = float(rng.uniform(max(0.0, 1.0 - contrast), 1.0 + contrast))
    brightness_first = rng.random() < 0.5

    arr, kind = _to_array(image)
    if hflip:
        arr = arr[:, ::-1]
    if vflip:
        arr = arr[::-1]
    arr = _rotate_nearest(np.ascontiguousarray(arr), angle)
    x = _as_float(arr)

    def _brightness(x: np.ndarray) -> np.ndarray:
        if b != 1.0:
            x *= np.float32(b)
            np.clip(x, 0.0, 1.0, out=x)
        return x

    def _contrast(x: np.ndarray) -> np.ndarray:
        if c != 1.0:
            mean = np.float32((x.reshape(-1, 3) @ _LUMA).mean())
            x -= mean
            x *= np.float32(c)
            x += mean
            np.clip(x, 0.0, 1.0, out=x)
        return x

    x = _contrast(_brightness(x)) if brightness_first else _brightness(_contrast(x))
    x = _gaussian_float(x, rng, sigma)
    return _from_array(x, kind)


# --------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------


def _u64_words(name: str, value: int) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return [value & 0xFFFFFFFF, value >> 32]


def view_seed(base_seed: int, step: int, prompt_index: int, view_name: str) -> int:
    """A stable seed in ``[0, 2**63)`` for one view of one prompt at one step.

    Derived with ``numpy.random.SeedSequence`` from a fixed-length word list: the three integers
    (each in ``[0, 2**64)``) and a BLAKE2b digest of ``view_name`` (never Python's salted
    ``hash``), so it is the same in every process and on every machine. Pass ``View.key`` (which
    includes the parameters) as ``view_name`` to give, e.g., each noise level its own noise.
    The same seed for a prompt's ``G`` rollouts gives them one shared view (PAPO's mask).
    """
    if not isinstance(view_name, str):
        raise TypeError(f"view_name must be a str, got {type(view_name).__name__}")
    digest = hashlib.blake2b(view_name.encode("utf-8"), digest_size=16, person=b"perceptrl.view").digest()
    words = _u64_words("base_seed", base_seed) + _u64_words("step", step)
    words += _u64_words("prompt_index", prompt_index)
    words += [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


# --------------------------------------------------------------------------------------------
# View specs and registry
# --------------------------------------------------------------------------------------------


def _check_prob(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_nonneg(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not float(value) >= 0.0 or not np.isfinite(float(value)):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_t(t: Any) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise TypeError(f"t must be an int step in [0, {DDPM_STEPS - 1}], got {type(t).__name__}")
    if not 0 <= t < DDPM_STEPS:
        raise ValueError(f"t must be in [0, {DDPM_STEPS - 1}], got {t}")
    return int(t)


def _norm_clean(params: dict) -> dict:
    return {}


def _norm_mask(params: dict) -> dict:
    out = {"patch": params.pop("patch", 14), "p": params.pop("p", 0.6), "fill": params.pop("fill", 0.0)}
    _check_int("patch", out["patch"], 1)
    _check_prob("p", out["p"])
    fill = out["fill"]
    if isinstance(fill, (list, tuple, np.ndarray)):
        fill = tuple(float(v) for v in fill)
        if len(fill) != 3 or not all(0.0 <= v <= 1.0 for v in fill):
            raise ValueError(f"fill must be one or three intensities in [0, 1], got {out['fill']!r}")
    else:
        _check_prob("fill", fill)
        fill = float(fill)
    out.update(patch=int(out["patch"]), p=float(out["p"]), fill=fill)
    return out


def _norm_gaussian(params: dict) -> dict:
    if "sigma" not in params:
        raise TypeError("view 'gaussian' needs sigma")
    sigma = params.pop("sigma")
    _check_nonneg("sigma", sigma)
    return {"sigma": float(sigma)}


def _norm_ddpm(params: dict) -> dict:
    has_t, has_level = "t" in params, "noise_level" in params
    if has_t == has_level:
        raise TypeError("view 'ddpm' needs exactly one of t (step 0..999) or noise_level (t = int(level * 1000))")
    t = _check_t(params.pop("t")) if has_t else ddpm_t_from_level(params.pop("noise_level"))
    return {"t": t}


def _norm_vogue(params: dict) -> dict:
    if "sigma" not in params:
        raise TypeError("view 'vogue' needs sigma (paper 0.4, released scripts 0.2)")
    out = {
        "sigma": params.pop("sigma"),
        "flip_p": params.pop("flip_p", 0.5),
        "max_degrees": params.pop("max_degrees", 10.0),
        "brightness": params.pop("brightness", 0.15),
        "contrast": params.pop("contrast", 0.15),
    }
    _check_nonneg("sigma", out["sigma"])
    _check_prob("flip_p", out["flip_p"])
    for key in ("max_degrees", "brightness", "contrast"):
        _check_nonneg(key, out[key])
    return {k: float(v) for k, v in out.items()}


_REGISTRY: dict[str, tuple[Callable[..., Any], Callable[[dict], dict]]] = {
    "clean": (clean, _norm_clean),
    "mask_patches": (mask_patches, _norm_mask),
    "gaussian": (gaussian, _norm_gaussian),
    "ddpm": (ddpm, _norm_ddpm),
    "vogue": (vogue, _norm_vogue),
}
VIEW_NAMES: tuple[str, ...] = tuple(_REGISTRY)


class View:
    """A named, parameterised view: ``view(image, seed) -> image`` of the same size.

    ``seed`` is an int (e.g. from :meth:`seed_for`) or a ``numpy.random.Generator``. Views are
    immutable, hashable, comparable and picklable; ``key`` is a canonical string such as
    ``"ddpm(t=300)"``, and ``to_dict()`` / ``make_view(**d)`` round-trip.
    """

    __slots__ = ("_name", "_items")

    def __init__(self, name: str, params: Mapping[str, Any] | None = None):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_items", tuple(sorted((params or {}).items())))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("View is immutable")

    def __reduce__(self):
        return (View, (self._name, dict(self._items)))

    @property
    def name(self) -> str:
        return self._name

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._items)

    @property
    def is_identity(self) -> bool:
        return self._name == "clean"

    @property
    def key(self) -> str:
        return f"{self._name}({', '.join(f'{k}={v!r}' for k, v in self._items)})"

    def seed_for(self, base_seed: int, step: int, prompt_index: int) -> int:
        """``view_seed(base_seed, step, prompt_index, self.key)``."""
        return view_seed(base_seed, step, prompt_index, self.key)

    def __call__(self, image: Any, seed: Any) -> Any:
        fn = _REGISTRY[self._name][0]
        return fn(image, _as_rng(seed) if self._name != "clean" else None, **dict(self._items))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self._name, **dict(self._items)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, View) and (self._name, self._items) == (other._name, other._items)

    def __hash__(self) -> int:
        return hash((self._name, self._items))

    def __repr__(self) -> str:
        return f"View({self.key})"


def make_view(name: str, **params: Any) -> View:
    """Build a validated :class:`View`.

    * ``clean`` -- identity (RGB conversion only);
    * ``mask_patches(patch=14, p=0.6, fill=0)`` -- PAPO;
    * ``gaussian(sigma)``;
    * ``ddpm(t=...)`` or ``ddpm(noise_level=...)`` with ``t = int(level * 1000)`` (NoisyGRPO);
      NoisyRollout's ``t = int(500 * eta)`` is computed by the caller and passed as ``t``;
    * ``vogue(sigma, flip_p=0.5, max_degrees=10, brightness=0.15, contrast=0.15)`` -- DUPL/VOGUE.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown view {name!r}; known views: {', '.join(VIEW_NAMES)}")
    rest = dict(params)
    normalised = _REGISTRY[name][1](rest)
    if rest:
        raise TypeError(f"view {name!r} got unexpected parameter(s): {', '.join(sorted(rest))}")
    return View(name, normalised)

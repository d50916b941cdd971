"""Preprocessing and augmentation as MONAI dictionary transforms over the keys ``"image"`` and ``"mask"``.

Deterministic part (:func:`preprocessing_transform`, cached by the dataset), on one scan
``{"image": [1, D, H, W], "mask": [1, D, H, W], "spacing": (z, y, x) mm, "nodule": NoduleLocation | None}``:

1. :class:`ResampleToSpacingd` (only when ``target_spacing`` is set): MONAI ``Spacing``,
   image trilinear, mask nearest; the nodule location is rescaled with the grid.
2. HU clipping to ``hu_window`` (MONAI ``ScaleIntensityRanged`` with ``clip=True``).
3. Normalisation: ``"zscore"`` (:class:`ZScoreNormalised`: MONAI ``NormalizeIntensityd``'s
   formula over the whole volume, as the paper z-scores each 16 x 512 x 512 volume, with the
   statistics computed so that they do not depend on the thread count) or ``"window"`` (the HU
   window mapped to [0, 1]).
4. :class:`NoduleCropd`: a ``crop_size`` box centred on the nodule location the cohort gives
   (``scan.nodule``: the manifest's reader's mark), else the volume centre, padded where it
   leaves the volume (image with the volume's minimum, i.e. air; mask with 0). Placement
   never reads the mask: at test time a model sees only where a reader pointed, as in real
   use. ``crop_mode="slab"`` is the seed's (and the paper's) input: the depth window centred
   on the mark's z1..z2 slab, in plane centred on the volume (the whole field, unshifted,
   when the crop's in-plane size equals the volume's). The box's first voxel in the volume
   and the volume's shape are kept (``data["crop_start"]``, ``data["field_shape"]``), so a
   prediction can be pasted back into the scan's field.

Random part, on all time points of a patient stacked as channels ``{"image": [T, D, H, W],
"mask": [T, D, H, W]}``. First the training crop: its centre is shifted from the location by
a uniform integer draw in ``[-s, s]`` voxels per axis (:attr:`AugmentConfig.shift_voxels`,
:func:`jitter_offsets`, one draw per patient and epoch for all its time points); the dataset
caches a box enlarged by ``s`` on each side and takes the ``crop_size`` crop inside it
(validation and test datasets: the plain ``crop_size`` crop on the location, no shift). Then
(:func:`augmentation_transform`) MONAI ``RandZoomd`` (only with ``zoom_prob`` > 0), ``RandFlipd`` (each axis), ``RandRotate90d`` (in plane,
only for square crops) and ``RandGaussianNoised``. Because the time points are channels of one
array, every scan of a patient gets the same flips and rotation (one random draw); the noise
is applied to all scans or none, with an independent noise field per scan, as independent
acquisitions have.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandZoomd,
    ScaleIntensityRanged,
    Spacing,
)

from mstnet.data.cohort import NoduleLocation

NORMALISATIONS = ("zscore", "window")
CROP_MODES = ("nodule", "slab")


@dataclass(frozen=True)
class PreprocessConfig:
    """The deterministic preprocessing of every scan.

    Args:
        crop_size: ``(D, H, W)`` of the crop fed to the models. Default ``(16, 64, 64)``.
        target_spacing: ``(z, y, x)`` mm to resample to, or ``None`` (default) to keep the scan's grid.
        hu_window: ``(low, high)`` HU to clip to, or ``None``. Default ``(-1000, 400)``: air to
            dense soft tissue, cutting bone and outside-field values (-2048, -3024).
        normalisation: ``"zscore"`` (default, per volume, as the paper) or ``"window"``
            (``hu_window`` mapped to [0, 1]; needs a window).
        crop_mode: ``"nodule"`` (default, centred on the nodule location) or ``"slab"`` (the
            location's z1..z2 slab, in plane centred on the volume: the whole field when the
            crop's in-plane size equals the volume's, as the paper feeds 16 x 512 x 512).
    """

    crop_size: tuple[int, int, int] = (16, 64, 64)
    target_spacing: tuple[float, float, float] | None = None
    hu_window: tuple[float, float] | None = (-1000.0, 400.0)
    normalisation: Literal["zscore", "window"] = "zscore"
    crop_mode: Literal["nodule", "slab"] = "nodule"

    def __post_init__(self) -> None:
        if len(self.crop_size) != 3 or any(int(n) < 1 for n in self.crop_size):
            raise ValueError(f"crop_size must be three positive sizes (D, H, W), got {self.crop_size}")
        if self.target_spacing is not None and (len(self.target_spacing) != 3 or any(s <= 0 for s in self.target_spacing)):
            raise ValueError(f"target_spacing must be three positive spacings (z, y, x) mm or None, got {self.target_spacing}")
        if self.hu_window is not None and (len(self.hu_window) != 2 or self.hu_window[0] >= self.hu_window[1]):
            raise ValueError(f"hu_window must be (low, high) with low < high, or None, got {self.hu_window}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        if self.normalisation == "window" and self.hu_window is None:
            raise ValueError("normalisation='window' needs an hu_window")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        object.__setattr__(self, "crop_size", tuple(int(n) for n in self.crop_size))

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; each probability is per patient (all its time points move together).

    Args:
        flip_prob: probability of a flip along each of the three axes. Default 0.5.
        rotate90_prob: probability of an in-plane rotation by 90, 180 or 270 degrees (square crops only). Default 0.5.
        noise_prob: probability of additive Gaussian noise. Default 0.2.
        noise_std: its standard deviation in normalised intensity units. Default 0.05.
        zoom_prob: probability of a zoom of the crop (all axes by one factor, as nnU-Net's
            scaling; image trilinear, mask nearest, the crop's size kept: centre cut when
            zooming in, edge-padded when zooming out). Default 0.0 (off).
        zoom_range: ``(low, high)`` zoom factor, drawn uniformly. Default ``(0.7, 1.4)``,
            nnU-Net's range: a factor 1.4 shows a 14 mm nodule as a 20 mm one.
        shift_voxels: ``(z, y, x)`` largest shift of the training crop's centre from the nodule
            location, drawn uniformly among the integers ``-s .. s`` per axis, one draw per
            patient and epoch (all its time points move together). Default ``(1, 4, 4)``: the
            model does not learn that the nodule sits exactly at the crop centre. With
            ``crop_mode="slab"`` only the depth shift applies (the slab spans the whole field
            in plane).
    """

    flip_prob: float = 0.5
    rotate90_prob: float = 0.5
    noise_prob: float = 0.2
    noise_std: float = 0.05
    zoom_prob: float = 0.0
    zoom_range: tuple[float, float] = (0.7, 1.4)
    shift_voxels: tuple[int, int, int] = (1, 4, 4)

    def __post_init__(self) -> None:
        if not 0.0 <= self.zoom_prob <= 1.0:
            raise ValueError(f"zoom_prob must be a probability in [0, 1], got {self.zoom_prob}")
        if len(self.zoom_range) != 2 or not 0.0 < self.zoom_range[0] <= self.zoom_range[1]:
            raise ValueError(f"zoom_range must be (low, high) with 0 < low <= high, got {self.zoom_range}")
        object.__setattr__(self, "zoom_range", tuple(float(z) for z in self.zoom_range))
        if len(self.shift_voxels) != 3 or any(int(s) < 0 for s in self.shift_voxels):
            raise ValueError(f"shift_voxels must be three non-negative voxel counts (z, y, x), got {self.shift_voxels}")
        object.__setattr__(self, "shift_voxels", tuple(int(s) for s in self.shift_voxels))


class ResampleToSpacingd(MapTransform):
    """Resample ``keys`` from ``data["spacing"]`` to ``target_spacing`` with MONAI ``Spacing``.

    Image modes are trilinear, mask modes nearest (``modes``, one per key). Updates
    ``data["spacing"]`` and scales ``data["nodule"]`` (x' = x * s / t per axis).
    """

    def __init__(self, keys: KeysCollection, target_spacing: Sequence[float], modes: Sequence[str] = ("bilinear", "nearest"),
                 allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.target_spacing = tuple(float(s) for s in target_spacing)
        self.resamplers = [Spacing(pixdim=self.target_spacing, mode=mode) for mode in modes]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        out = dict(data)
        spacing = tuple(float(s) for s in out["spacing"])
        if np.allclose(spacing, self.target_spacing):
            return out
        affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
        for key, resample in zip(self.key_iterator(out), self.resamplers):
            source = MetaTensor(torch.as_tensor(np.asarray(out[key], dtype=np.float32)), affine=affine)
            out[key] = resample(source).as_tensor().numpy()
        nodule = out.get("nodule")
        if nodule is not None:
            scale = [s / t for s, t in zip(spacing, self.target_spacing)]
            out["nodule"] = NoduleLocation(nodule.x * scale[2], nodule.y * scale[1],
                                           int(round(nodule.z1 * scale[0])), int(round(nodule.z2 * scale[0])))
        out["spacing"] = self.target_spacing
        return out


class ZScoreNormalised(MapTransform):
    """Z-score ``keys`` over the whole volume: ``(x - mean) / std`` (population std; 1 where it is 0).

    The formula of MONAI ``NormalizeIntensityd`` (no ``nonzero``, no ``channel_wise``), but the
    statistics are numpy float64 reductions rather than float32 torch ones: torch splits a
    reduction of more than 32768 elements over its intra-op threads, so the mean changes in the
    last bit with ``torch.get_num_threads()`` (the main process has several, a DataLoader worker
    one), and every voxel by ~1e-6 with it. numpy reduces in one thread with pairwise summation,
    so the result is the same in any process on any machine. Returns float32 numpy arrays.
    """

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            array = np.asarray(_as_numpy(out[key]), dtype=np.float32)
            if array.size == 0:
                out[key] = array
                continue
            mean = array.mean(dtype=np.float64)
            std = array.std(dtype=np.float64)
            if np.float32(std) == 0.0:
                std = 1.0
            out[key] = ((array - mean) / std).astype(np.float32)
        return out


def crop_centre(shape: Sequence[int], nodule: NoduleLocation | None, mode: str = "nodule") -> tuple[float, float, float]:
    """Centre ``(z, y, x)`` in voxels of the crop of a volume of ``shape`` ``(D, H, W)``.

    ``mode="nodule"``: the nodule location (z = middle of z1..z2). ``mode="slab"``: depth on the
    middle of z1..z2, in plane the volume centre. Without a location: the volume centre. Only
    the location is read, never a mask, so the crop is placed as it would be in real use
    (from a reader's mark or a detector), never from the answer.
    """
    depth, height, width = shape
    if mode == "slab":
        z = (nodule.z1 + nodule.z2) / 2 if nodule is not None else (depth - 1) / 2
        return (z, (height - 1) / 2, (width - 1) / 2)
    if nodule is not None:
        return ((nodule.z1 + nodule.z2) / 2, float(nodule.y), float(nodule.x))
    return ((depth - 1) / 2, (height - 1) / 2, (width - 1) / 2)


def crop_start(centre: Sequence[float], size: Sequence[int]) -> tuple[int, int, int]:
    """First voxel ``(z, y, x)`` of the ``size`` box centred on ``centre`` (see :func:`crop_or_pad`); may be negative."""
    return tuple(int(np.floor(c + 0.5)) - int(n) // 2 for c, n in zip(centre, size))


def crop_or_pad(array: np.ndarray, centre: Sequence[float], size: Sequence[int], pad_value: float) -> np.ndarray:
    """The ``size`` box of ``array`` (``[C, D, H, W]``) centred on ``centre``, padded with ``pad_value`` outside.

    The box starts at ``round(centre) - size // 2`` on each axis (MONAI ``SpatialCrop``'s
    convention), so the centre voxel lands at index ``size // 2``.
    """
    starts = crop_start(centre, size)
    out = np.full((array.shape[0], *size), pad_value, dtype=array.dtype)
    source, target = [slice(None)], [slice(None)]
    for start, n, extent in zip(starts, size, array.shape[1:]):
        lo, hi = max(start, 0), min(start + n, extent)
        if hi <= lo:
            return out
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    out[tuple(target)] = array[tuple(source)]
    return out


class NoduleCropd(MapTransform):
    """Crop ``keys`` to ``crop_size`` around the nodule, padding where the box leaves the volume.

    Centre: :func:`crop_centre` of ``data["nodule"]`` (the location only; the mask is cropped,
    never read for placement; no location: the volume centre). The image is padded with its
    minimum (air after clipping), the mask with 0. Stores the crop centre in
    ``data["crop_centre"]``, the box's first voxel in ``data["crop_start"]`` and the volume's
    ``(D, H, W)`` in ``data["field_shape"]``.
    """

    def __init__(self, keys: KeysCollection, crop_size: Sequence[int], mode: str = "nodule", allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.crop_size = tuple(int(n) for n in crop_size)
        self.mode = mode

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        out = dict(data)
        field_shape = tuple(int(n) for n in np.shape(out["image"])[1:])
        centre = crop_centre(field_shape, out.get("nodule"), self.mode)
        for key in self.key_iterator(out):
            array = np.asarray(out[key])
            pad_value = float(array.min()) if key == "image" and array.size else 0.0
            out[key] = crop_or_pad(array, centre, self.crop_size, pad_value)
        out["crop_centre"] = centre
        out["crop_start"] = crop_start(centre, self.crop_size)
        out["field_shape"] = field_shape
        return out


def preprocessing_transform(config: PreprocessConfig) -> Compose:
    """The deterministic pipeline of ``config`` (see the module docstring) as a MONAI ``Compose``."""
    steps: list = []
    if config.target_spacing is not None:
        steps.append(ResampleToSpacingd(("image", "mask"), config.target_spacing))
    if config.hu_window is not None:
        low, high = config.hu_window
        if config.normalisation == "window":
            steps.append(ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
        else:
            steps.append(ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=low, b_max=high, clip=True))
    if config.normalisation == "zscore":
        steps.append(ZScoreNormalised("image"))
    steps.append(NoduleCropd(("image", "mask"), config.crop_size, config.crop_mode))
    return Compose(steps, map_items=False)


def augmentation_transform(config: AugmentConfig, crop_size: Sequence[int], seed: int = 0) -> Compose:
    """Random transforms applied identically to all time points (stacked as channels); seeded."""
    keys = ("image", "mask")
    steps: list = []
    if config.zoom_prob > 0:
        steps.append(RandZoomd(keys, prob=config.zoom_prob, min_zoom=config.zoom_range[0], max_zoom=config.zoom_range[1],
                               mode=("trilinear", "nearest-exact"), padding_mode="edge", keep_size=True))
    steps += [RandFlipd(keys, prob=config.flip_prob, spatial_axis=axis) for axis in range(3)]
    if crop_size[1] == crop_size[2]:
        steps.append(RandRotate90d(keys, prob=config.rotate90_prob, max_k=3, spatial_axes=(1, 2)))
    steps.append(RandGaussianNoised("image", prob=config.noise_prob, mean=0.0, std=config.noise_std))
    compose = Compose(steps, map_items=False)
    compose.set_random_state(seed=seed)
    return compose


def preprocess_scan(transform: Compose, image: np.ndarray, mask: np.ndarray | None, spacing: Sequence[float],
                    nodule: NoduleLocation | None, with_box: bool = False) -> tuple:
    """Run the deterministic ``transform`` on one scan.

    Args:
        image: ``(D, H, W)`` HU.
        mask: ``(D, H, W)`` 0/1 or ``None`` (then an all-zero mask is used; the crop is placed
            from ``nodule`` alone either way).
        with_box: also return the crop box.

    Returns:
        (image ``(d, h, w)`` float32, mask ``(d, h, w)`` uint8, spacing ``(z, y, x)`` mm after
        resampling), with ``with_box`` followed by the box: int64 ``[2, 3]``, its first voxel
        ``(z, y, x)`` in the (resampled) volume and that volume's shape ``(D, H, W)``.
    """
    data = {"image": np.asarray(image, dtype=np.float32)[None],
            "mask": (np.zeros(image.shape, np.float32) if mask is None else np.asarray(mask, dtype=np.float32))[None],
            "spacing": tuple(float(s) for s in spacing), "nodule": nodule}
    out = transform(data)
    image_out = np.asarray(_as_numpy(out["image"])[0], dtype=np.float32)
    mask_out = (np.asarray(_as_numpy(out["mask"])[0]) > 0.5).astype(np.uint8)
    spacing_out = tuple(float(s) for s in out["spacing"])
    if with_box:
        box = np.array([out["crop_start"], out["field_shape"]], dtype=np.int64)
        return image_out, mask_out, spacing_out, box
    return image_out, mask_out, spacing_out


_JITTER_STREAM = 0x6A697474
"""Tells the jitter's random stream apart from any other seeded by (seed, index)."""


def jitter_offsets(shift_voxels: Sequence[int], seed: int, index: int) -> tuple[int, int, int]:
    """The training crop's shift ``(z, y, x)`` for item ``index`` at augmentation ``seed``: uniform integers in ``[-s, s]``.

    Its own stream (not the MONAI transforms' state), a function of (seed, index) only, so it is
    the same in the main process and in any DataLoader worker, whatever the reading order.
    """
    rng = np.random.default_rng([int(seed) % 2**32, int(index), _JITTER_STREAM])
    return tuple(int(rng.integers(-s, s + 1)) if s > 0 else 0 for s in shift_voxels)


def paste_into_field(crop: np.ndarray, start: Sequence[int], field_shape: Sequence[int]) -> np.ndarray:
    """A zero array of ``field_shape`` holding ``crop`` with its first voxel at ``start`` (parts outside the field dropped)."""
    out = np.zeros(tuple(int(n) for n in field_shape), dtype=crop.dtype)
    source, target = [], []
    for begin, n, extent in zip(start, crop.shape, out.shape):
        lo, hi = max(int(begin), 0), min(int(begin) + n, extent)
        if hi <= lo:
            return out
        target.append(slice(lo, hi))
        source.append(slice(lo - int(begin), hi - int(begin)))
    out[tuple(target)] = crop[tuple(source)]
    return out


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)

"""Preprocessing of one grayscale CT image, shared by training and serving.

Every consumer (the ``preprocess`` stage, the command line, the web service) calls
``preprocess_image`` with the same ``PreprocessConfig``, so that the pixels a model receives at
serving time are computed exactly as in training. The steps, in order:

1. crop uniform borders: rows and columns at the edges whose values span at most
   ``crop_tolerance`` grey levels (frames, black margins);
2. resize to ``image_size`` x ``image_size`` (area averaging when shrinking, bilinear when
   enlarging); with ``keep_aspect_ratio`` the longer side is resized to ``image_size`` and the
   image is centred on a black square, so that anatomy keeps its proportions;
3. CLAHE, contrast-limited adaptive histogram equalisation on a ``clahe_tile_grid`` square grid
   with clip limit ``clahe_clip_limit``, at the final size so that tiles cover the same share
   of every image.
"""

import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of ``preprocess_image``; see the module docstring for each step."""

    image_size: int = 256
    crop_borders: bool = True
    crop_tolerance: int = 10
    keep_aspect_ratio: bool = True
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8

    def __post_init__(self):
        _check_int("image_size", self.image_size, 8, 4096)
        _check_int("crop_tolerance", self.crop_tolerance, 0, 255)
        _check_int("clahe_tile_grid", self.clahe_tile_grid, 1, self.image_size)
        if isinstance(self.clahe_clip_limit, bool) or not isinstance(self.clahe_clip_limit, (int, float)):
            raise ValueError(f"preprocess.clahe_clip_limit must be a number, got {self.clahe_clip_limit!r}.")
        if not 0 < self.clahe_clip_limit < math.inf:
            raise ValueError(
                f"preprocess.clahe_clip_limit must be a positive finite number, got {self.clahe_clip_limit!r}."
            )
        for name in ("crop_borders", "keep_aspect_ratio", "clahe"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"preprocess.{name} must be true or false, got {getattr(self, name)!r}.")

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> "PreprocessConfig":
        """Build a configuration from the ``preprocess`` section of ``params.yaml``.

        Keys that are not preprocessing steps (such as ``workers``) are ignored.
        """
        names = cls.__dataclass_fields__.keys()
        return cls(**{name: section[name] for name in names if name in section})


def crop_uniform_borders(gray: np.ndarray, tolerance: int) -> np.ndarray:
    """Remove edge rows and columns whose values span at most ``tolerance`` grey levels.

    Args:
        gray: ``(H, W) uint8`` image.
        tolerance: largest ``max - min`` of a row or column that still counts as uniform.

    Returns:
        A view of ``gray``; the image itself when every row or every column is uniform.
    """
    signed = gray.astype(np.int16)
    row_span = signed.max(axis=1) - signed.min(axis=1)
    col_span = signed.max(axis=0) - signed.min(axis=0)

    rows = np.flatnonzero(row_span > tolerance)
    cols = np.flatnonzero(col_span > tolerance)
    if rows.size == 0 or cols.size == 0:
        return gray

    return gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def pad_to_square(gray: np.ndarray) -> np.ndarray:
    """Centre an ``(H, W)`` image on a black square of side ``max(H, W)``."""
    height, width = gray.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(gray, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT, value=0)


def resize(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an image: area averaging to shrink, bilinear to enlarge."""
    shrinking = gray.shape[0] * gray.shape[1] >= height * width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(gray), (width, height), interpolation=interpolation)


def resize_square(gray: np.ndarray, size: int, keep_aspect_ratio: bool = True) -> np.ndarray:
    """Resize an image to ``size`` x ``size``.

    With ``keep_aspect_ratio`` the longer side becomes ``size`` and the result is centred on a
    black square. Padding after resizing rather than before keeps the resize small.
    """
    if not keep_aspect_ratio:
        return resize(gray, size, size)

    height, width = gray.shape
    scale = size / max(height, width)
    scaled = resize(gray, max(1, round(height * scale)), max(1, round(width * scale)))
    return pad_to_square(scaled) if scaled.shape[0] != scaled.shape[1] else scaled


def apply_clahe(gray: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    """Apply contrast-limited adaptive histogram equalisation (OpenCV's CLAHE)."""
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(tile_grid, tile_grid))
    return clahe.apply(gray)


def preprocess_image(gray: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Turn one grayscale image into the model's input.

    Args:
        gray: ``(H, W) uint8`` image, as returned by ``chestct.imaging.to_grayscale``.
        config: the preprocessing parameters used in training.

    Returns:
        ``(image_size, image_size) uint8`` array.

    Raises:
        ValueError: if ``gray`` is not a non-empty 2-D uint8 array.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8 or gray.size == 0:
        raise ValueError(f"Expected a non-empty (H, W) uint8 image, got shape {gray.shape} and dtype {gray.dtype}.")

    if config.crop_borders:
        gray = crop_uniform_borders(gray, config.crop_tolerance)

    image = resize_square(gray, config.image_size, config.keep_aspect_ratio)

    if config.clahe:
        image = apply_clahe(image, config.clahe_clip_limit, config.clahe_tile_grid)
    return image


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"preprocess.{name} must be an integer from {low} to {high}, got {value!r}.")

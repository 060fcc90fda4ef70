"""The CheXNet input transform: a pure function shared by the preprocess worker, pipelines and training.

CheXNet (Rajpurkar et al. 2017) downscales the whole radiograph to 224x224; there is no crop, so the
aspect ratio is not kept. Resampling is Pillow's BOX filter on the float image: for the usual case of
downscaling it is an exact area average (antialiased) and, having no negative lobes, adds no ringing
halos around small bright findings and never leaves [0, 1].
"""

from __future__ import annotations

from typing import Final

import numpy as np
from PIL import Image

from chexstack.imageio import Decoded, decode
from chexstack.settings import IMAGE_SIZE, Limits

RESAMPLING: Final = Image.Resampling.BOX

__all__ = ["IMAGE_SIZE", "RESAMPLING", "preprocess_bytes", "resize01", "to_model_input"]


def resize01(pixels01: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize float [0, 1] grey pixels to size x size (float32) with the model's resampling."""
    if pixels01.ndim != 2 or pixels01.size == 0:
        raise ValueError(f"expected a non-empty 2-D grey image, got shape {pixels01.shape}")
    src = np.ascontiguousarray(pixels01, dtype=np.float32)
    img = Image.fromarray(src)  # float32 -> mode "F", so no precision is lost before resampling
    out = np.asarray(img.resize((size, size), resample=RESAMPLING), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def to_model_input(decoded: Decoded) -> np.ndarray:
    """uint8 (224, 224): the whole image resized to the model's input, rounded to 0..255."""
    small = resize01(decoded.pixels, IMAGE_SIZE)
    return np.rint(small * 255.0).astype(np.uint8)


def preprocess_bytes(data: bytes, limits: Limits) -> np.ndarray:
    """Decode an upload and return the model input; raises chexstack.imageio.InvalidImage."""
    return to_model_input(decode(data, limits))

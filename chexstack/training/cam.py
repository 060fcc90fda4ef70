"""Class activation maps as pictures: heat-map overlays of a radiograph for TensorBoard and reports."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from chexstack.labels import LABELS


def compute(model: Any, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N,14], CAMs [N,h,w,14] in [0, 1]) as numpy for uint8 pixels [N,S,S,1]."""
    import keras

    from chexstack.model import explain_pixels

    probabilities, cams = explain_pixels(model, pixels)
    return np.asarray(keras.ops.convert_to_numpy(probabilities)), np.asarray(keras.ops.convert_to_numpy(cams))


def heat_colours(values: np.ndarray) -> np.ndarray:
    """[...] values in [0, 1] -> [..., 3] uint8 in a blue-cyan-yellow-red ramp (a jet-like map)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    stops = np.array([0.0, 0.35, 0.65, 1.0])
    colours = np.array([[0, 0, 160], [0, 200, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float64)
    rgb = np.stack([np.interp(v[..., 0], stops, colours[:, c]) for c in range(3)], axis=-1)
    out: np.ndarray = np.rint(rgb).astype(np.uint8)
    return out


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB [S,S,3]: the grey image with the CAM (any h x w) upsampled smoothly and blended on top."""
    grey = np.asarray(image, dtype=np.uint8).reshape(image.shape[0], image.shape[1])
    size = (grey.shape[1], grey.shape[0])
    up = np.asarray(
        Image.fromarray(np.asarray(cam, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR)
    )
    base = np.repeat(grey[..., None], 3, axis=-1).astype(np.float64)
    # Weight the colour by the activation itself so cold regions keep the radiograph readable.
    weight = alpha * np.clip(up, 0.0, 1.0)[..., None]
    blended = base * (1 - weight) + heat_colours(up).astype(np.float64) * weight
    out: np.ndarray = np.rint(blended).astype(np.uint8)
    return out


def panel(
    image: np.ndarray, cams: np.ndarray, probabilities: np.ndarray, truth: np.ndarray, scale: int = 2
) -> np.ndarray:
    """One sample: the radiograph, then the CAM of its top predicted class, captioned with label and p."""
    k = int(np.argmax(probabilities))
    grey = np.asarray(image).reshape(image.shape[0], image.shape[1])
    left = np.repeat(grey[..., None], 3, axis=-1)
    right = overlay(grey, cams[..., k])
    pic = Image.fromarray(np.concatenate([left, right], axis=1))
    pic = pic.resize((pic.width * scale, pic.height * scale), Image.Resampling.NEAREST)
    true_names = [LABELS[i] for i in np.flatnonzero(truth)] or ["No Finding"]
    caption = f"{LABELS[k]} p={probabilities[k]:.2f} | true: {', '.join(true_names)}"
    canvas = Image.new("RGB", (pic.width, pic.height + 14), (0, 0, 0))
    canvas.paste(pic, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), caption, fill=(255, 255, 255))
    return np.asarray(canvas)


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()

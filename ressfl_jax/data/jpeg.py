"""JPEG round trip of image arrays, as the reference stores its inversion targets (spec §7.4).

The reference writes every attacker/decoder target as an 8-bit JPEG (quality 75, 4:2:0 chroma
subsampling: PIL's defaults through torchvision's ``save_image``) and reads it back, so its
ground truth is the JPEG-decoded image. On its 128 CIFAR-10 targets the round trip alone costs
MSE ~0.001. We apply the same encoder once, on the host, to uint8 arrays.
"""

import io

import numpy as np
from PIL import Image

_SUBSAMPLING_420 = 2  # PIL's code for 4:2:0.


def jpeg_round_trip(images: np.ndarray, *, quality: int = 75) -> np.ndarray:
    """Encodes and decodes each image with PIL's JPEG (4:2:0 chroma subsampling).

    Args:
      images: uint8 [N, H, W, 3].
      quality: JPEG quality, 1..95 (the reference's 75).

    Returns:
      uint8 [N, H, W, 3], the decoded images.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"jpeg_round_trip expects uint8 [N, H, W, 3]; got {images.dtype} "
                         f"{images.shape}.")
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be in 1..95, got {quality}.")
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=quality,
                                                subsampling=_SUBSAMPLING_420)
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out

"""Test vectors for engine/src/recenter/opencv.rs: cv2.resize on seeded random 8-bit images,
as the reference pre-processor runs it (opencv-python-headless 4.10.0.84, x86-64, IPP on).

    pip install opencv-python-headless==4.10.0.84 safetensors numpy
    python scripts/opencv_vectors.py engine/tests/data/opencv_resize.safetensors
"""
import sys

import cv2
import numpy as np
from safetensors.numpy import save_file

CASES = [
    # name, (height, width, channels), (dst width, dst height), interpolation
    ("area_up_rgba", (29, 37, 4), (61, 48), cv2.INTER_AREA),
    ("area_down_rgba", (83, 71, 4), (40, 47), cv2.INTER_AREA),
    ("area_down_x2", (40, 30, 3), (15, 20), cv2.INTER_AREA),
    ("area_down_x3", (45, 33, 1), (11, 15), cv2.INTER_AREA),
    ("cubic_down_rgb", (90, 77, 3), (61, 50), cv2.INTER_CUBIC),
    ("cubic_down_tail", (70, 95, 3), (43, 41), cv2.INTER_CUBIC),
    ("cubic_up_rgb", (37, 41, 3), (64, 70), cv2.INTER_CUBIC),
    ("nearest_up", (30, 30, 1), (51, 51), cv2.INTER_NEAREST),
    ("nearest_down", (77, 64, 1), (50, 41), cv2.INTER_NEAREST),
]


def main(out):
    rng = np.random.default_rng(20261127)
    tensors = {}
    for name, shape, size, interpolation in CASES:
        # Smooth structure plus noise, so both flat runs and edges occur.
        h, w, c = shape
        y, x = np.mgrid[0:h, 0:w]
        base = (127 + 100 * np.sin(x / 5.0)[..., None] * np.cos(y / 7.0)[..., None])
        noise = rng.integers(-60, 60, size=shape)
        src = np.clip(base + noise, 0, 255).astype(np.uint8)
        dst = cv2.resize(src if c > 1 else src[..., 0], size, interpolation=interpolation)
        tensors[f"{name}.src"] = src
        tensors[f"{name}.dst"] = dst.reshape(size[1], size[0], c)
    save_file(tensors, out, metadata={"opencv": cv2.__version__, "ipp": str(cv2.ipp.useIPP())})


if __name__ == "__main__":
    main(sys.argv[1])

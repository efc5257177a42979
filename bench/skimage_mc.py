"""scikit-image's marching cubes (Lewiner, as the official pipeline uses it) on a raw f32 field.
Benchmark baseline only. Usage: python skimage_mc.py FIELD.f32 N RUNS -> "seconds verts faces"."""
import sys
import time

import numpy as np
from skimage import measure

path, n, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
field = np.fromfile(path, dtype=np.float32).reshape(n, n, n)
best = float("inf")
for _ in range(runs):
    start = time.perf_counter()
    verts, faces, _, _ = measure.marching_cubes(field, 0.0, method="lewiner")
    best = min(best, time.perf_counter() - start)
print(f"{best} {len(verts)} {len(faces)}")

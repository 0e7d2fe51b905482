"""The `splat` job kind: photos → SfM (pycolmap) → Gaussian splat training (gsplat) → PLY.

Importing this package sets OMP_WAIT_POLICY=PASSIVE before torch loads, unless the operator set it:
with torch's default (spinning) OpenMP threads, a CPU that is shared with anything else makes the CPU
rasterizer 10-20x slower (measured: a 40x30 render went from 0.05 s to 2.5 s under load).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

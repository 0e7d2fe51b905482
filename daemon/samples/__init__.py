"""Generated sample captures with known cameras, for `make demo`, the benchmarks and the tests.

Deterministic for a given seed, made on the spot (no network, no stored media):

- `cameras`: the pinhole `Scene` with its views' known poses, `look_at`, `ring_poses`, and how far
  recovered cameras are from the known ones.
- `textures` and `room`: a small textured room (floor, walls, a box and a sphere) ray-cast in numpy;
  `room.render_textured_scene` writes JPEG photos of it from cameras on a ring.
- `video`: a phone-like video orbiting the room (`write_orbit_video`), encoded with PyAV.
- `gaussians`: random Gaussians in front of a camera for the rasterizer (torch, imported only there).
- `models`: 3D models for the mesh kind (a dense scan, a many-part CAD export, large textures).
- `clouds` (with `cloud_world`): airborne lidar surveys with each point's true class, streamable by
  chunk; `cloud_files` writes them as LAS/LAZ, PLY, CSV/XYZ and E57, and makes the broken files the
  pointcloud kind must refuse.

numpy, Pillow and PyAV only (laspy, pyproj and pye57 in `cloud_files`), plus torch in `gaussians` and
pycolmap inside `cameras.model_rotation_errors` (which reads a recovered model). Nothing here imports
another daemon module, and no daemon module imports this package: the daemon never depends on its
samples.
"""

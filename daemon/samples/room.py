# ruff: noqa: N803, N806 - R, t, K, U, V: the notation of the multiple-view geometry literature
"""The sample room: a floor, four walls, a box and a sphere, ray-cast in numpy from known cameras.

`render_textured_scene` writes JPEG photos of it from cameras on an arc (`cameras.ring_poses`);
`render_view` renders one view from any pose (the orbit videos and the SfM benchmark use it). Poses
follow COLMAP (see `cameras`); the world's z is up, the room's floor at z = 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .cameras import Scene, SceneView, ring_poses
from .textures import PHOTOS, TextureSource, texture_atlas

ROOM_HALF = 6.0
"""Half the room's side (m): walls far enough behind the box to give parallax, near enough to fill
the frame with texture."""

ROOM_HEIGHT = 4.0
# float32 throughout: a float64 numpy scalar would promote every per-ray array to float64 (2× slower).
BOX_MIN = np.array([-0.7, -0.45, 0.0], np.float32)
BOX_MAX = np.array([0.7, 0.45, 1.1], np.float32)
SPHERE_CENTER, SPHERE_RADIUS = np.array([1.2, 0.9, 0.45], np.float32), np.float32(0.45)
LIGHT = (np.array([0.4, -0.3, 0.87]) / np.linalg.norm([0.4, -0.3, 0.87])).astype(np.float32)

SKY = -1
SPHERE = len(PHOTOS) - 1
"""Surface indices (into `textures.PHOTOS`) of the open ceiling and of the sphere."""

# Rays are kept as three flat float32 arrays (x, y, z components): numpy is several times faster on
# those than on (N, 3) arrays with per-row reductions, which keeps 30 views well under two seconds.
Rays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _quads() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every planar surface as (origin, edge u, edge v), in the order of `textures.PHOTOS`."""
    h, z = ROOM_HALF, ROOM_HEIGHT
    v3 = np.array
    floor = [(v3([x0, y0, 0.0]), v3([h, 0, 0.0]), v3([0, h, 0.0])) for y0 in (-h, 0.0) for x0 in (-h, 0.0)]
    walls = [
        (v3([-h, -h, z]), v3([2 * h, 0, 0]), v3([0, 0, -z])),
        (v3([h, -h, z]), v3([0, 2 * h, 0]), v3([0, 0, -z])),
        (v3([h, h, z]), v3([-2 * h, 0, 0]), v3([0, 0, -z])),
        (v3([-h, h, z]), v3([0, -2 * h, 0]), v3([0, 0, -z])),
    ]
    (x0, y0, _), (x1, y1, z1) = BOX_MIN, BOX_MAX
    dx, dy = x1 - x0, y1 - y0
    box = [
        (v3([x0, y0, z1]), v3([dx, 0, 0]), v3([0, 0, -z1])),
        (v3([x1, y0, z1]), v3([0, dy, 0]), v3([0, 0, -z1])),
        (v3([x1, y1, z1]), v3([-dx, 0, 0]), v3([0, 0, -z1])),
        (v3([x0, y1, z1]), v3([0, -dy, 0]), v3([0, 0, -z1])),
        (v3([x0, y1, z1]), v3([dx, 0, 0]), v3([0, -dy, 0])),
    ]
    return floor + walls + box


def _room_exit(o: np.ndarray, d: Rays) -> tuple[np.ndarray, np.ndarray]:
    """Where each ray leaves the room (cameras are inside): distance and surface index (floor
    quarter, wall, or SKY through the open ceiling)."""
    with np.errstate(divide="ignore"):
        tx = (np.where(d[0] > 0, np.float32(ROOM_HALF), -np.float32(ROOM_HALF)) - o[0]) / d[0]
        ty = (np.where(d[1] > 0, np.float32(ROOM_HALF), -np.float32(ROOM_HALF)) - o[1]) / d[1]
        tz = (np.where(d[2] > 0, np.float32(ROOM_HEIGHT), np.float32(0)) - o[2]) / d[2]
    t = np.minimum(tx, np.minimum(ty, tz))
    quarter = 2 * (o[1] + t * d[1] >= 0) + (o[0] + t * d[0] >= 0)  # floor quarters in `_quads` order
    surface = np.select(
        [t == tx, t == ty, d[2] > 0],  # x walls, y walls, open ceiling
        [np.where(d[0] > 0, 5, 7), np.where(d[1] > 0, 6, 4), SKY],
        default=quarter,
    )
    return t, surface


def _box_entry(o: np.ndarray, d: Rays) -> tuple[np.ndarray, np.ndarray]:
    """Slab test against the box: entry distance (inf on a miss) and the face entered."""
    near, far = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            t1, t2 = (BOX_MIN[k] - o[k]) / d[k], (BOX_MAX[k] - o[k]) / d[k]
            near.append(np.minimum(t1, t2))
            far.append(np.maximum(t1, t2))
    t_in = np.maximum(near[0], np.maximum(near[1], near[2]))
    t_out = np.minimum(far[0], np.minimum(far[1], far[2]))
    face = np.select(
        [t_in == near[0], t_in == near[1]], [np.where(d[0] > 0, 11, 9), np.where(d[1] > 0, 8, 10)], 12
    )
    return np.where((t_in <= t_out) & (t_in > 1e-4), t_in, np.inf), face


def _sphere_hit(o: np.ndarray, d: Rays) -> np.ndarray:
    oc = o - SPHERE_CENTER
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = d[0] * oc[0] + d[1] * oc[1] + d[2] * oc[2]
    disc = b * b - a * (oc @ oc - SPHERE_RADIUS**2)
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc > 0) & (t > 1e-4), t, np.inf)


def _surface_uv(p: Rays, surface: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texture coordinates of hit points and the cosine of their normal with the light."""
    planes = _quads()
    # Per surface: u = p·U/|U|² − O·U/|U|² (likewise v), and |cos(normal, light)| for shading.
    U = np.array([q[1] / (q[1] @ q[1]) for q in planes] + [np.zeros(3)], np.float32)
    V = np.array([q[2] / (q[2] @ q[2]) for q in planes] + [np.zeros(3)], np.float32)
    Uo = np.array([q[0] @ u for q, u in zip(planes, U, strict=False)] + [0.0], np.float32)
    Vo = np.array([q[0] @ v for q, v in zip(planes, V, strict=False)] + [0.0], np.float32)
    normals = np.cross(U, V)
    cos = np.abs(normals @ LIGHT) / np.maximum(np.linalg.norm(normals, axis=1), 1e-9)
    u = p[0] * U[surface, 0] + p[1] * U[surface, 1] + p[2] * U[surface, 2] - Uo[surface]
    v = p[0] * V[surface, 0] + p[1] * V[surface, 1] + p[2] * V[surface, 2] - Vo[surface]
    shade = cos.astype(np.float32)[surface]
    ball = surface == SPHERE
    n = [(p[k][ball] - SPHERE_CENTER[k]) / SPHERE_RADIUS for k in range(3)]
    u[ball] = np.arctan2(n[1], n[0]) / (2 * np.pi) + 0.5
    v[ball] = np.arccos(np.clip(n[2], -1, 1)) / np.pi
    shade[ball] = np.clip(n[0] * LIGHT[0] + n[1] * LIGHT[1] + n[2] * LIGHT[2], 0, 1)
    return u, v, shade


def render_view(
    R: np.ndarray,
    t: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    atlas: np.ndarray,
    *,
    bilinear: bool = False,
) -> np.ndarray:
    """Ray-cast one view (H×W×3 float, 0–255): nearest hit wins, flat Lambert shading, grey sky.
    `atlas` is `textures.texture_atlas(...)`."""
    o = (-R.T @ t).astype(np.float32)
    # World ray of pixel (x, y) = R^T K^-1 (x, y, 1) = x·a + y·b + c (not normalised: not needed).
    a, b, c = (R.T @ np.linalg.inv(K)).T.astype(np.float32)
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    d = tuple((xs * a[k] + ys * b[k] + c[k]).ravel() for k in range(3))
    # A component of exactly 0 would make 0 × inf = NaN in the slab tests below.
    d = tuple(np.where(component == 0, np.float32(1e-12), component) for component in d)
    t_room, surface = _room_exit(o, d)
    t_box, face = _box_entry(o, d)
    t_sphere = _sphere_hit(o, d)
    depth = np.minimum(t_room, np.minimum(t_box, t_sphere))
    surface = np.where(t_box == depth, face, np.where(t_sphere == depth, SPHERE, surface))
    out = np.full((width * height, 3), 200.0, np.float32)  # sky above the walls
    hit = surface != SKY
    points = tuple(o[k] + depth[hit] * d[k][hit] for k in range(3))
    u, v, shade = _surface_uv(points, surface[hit])
    texels = _bilinear if bilinear else _nearest
    out[hit] = (0.55 + 0.45 * shade)[:, None] * texels(atlas, surface[hit], u, v)
    return out.reshape(height, width, 3)


def _nearest(atlas: np.ndarray, surface: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    size = atlas.shape[1]
    x = np.clip((u * (size - 1)).astype(np.int32), 0, size - 1)
    y = np.clip((v * (size - 1)).astype(np.int32), 0, size - 1)
    return atlas[surface, y, x]


def _bilinear(atlas: np.ndarray, surface: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth magnification (large renders look at textures closer than one texel per pixel)."""
    size = atlas.shape[1]
    x, y = np.clip(u * (size - 1), 0, size - 1), np.clip(v * (size - 1), 0, size - 1)
    x0, y0 = np.minimum(x.astype(np.int32), size - 2), np.minimum(y.astype(np.int32), size - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = (1 - fx) * atlas[surface, y0, x0] + fx * atlas[surface, y0, x0 + 1]
    bottom = (1 - fx) * atlas[surface, y0 + 1, x0] + fx * atlas[surface, y0 + 1, x0 + 1]
    return (1 - fy) * top + fy * bottom


def render_textured_scene(
    out_dir: Path,
    *,
    count: int = 16,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
    arc_deg: float = 360.0,
    fov_deg: float = 60.0,
    textures: TextureSource = "auto",
    texture_size: int = 512,
    supersample: int = 2,
    bilinear: bool = False,
    principal_offset: tuple[float, float] = (0.0, 0.0),
) -> Scene:
    """Render `count` JPEG views of the textured room from cameras on an arc; return the known poses
    and pinhole intrinsics. Deterministic for a given seed; `supersample`² rays per pixel anti-alias
    the texture (aliasing would make features flicker between views); `bilinear` smooths textures
    seen closer than one texel per pixel (large renders), at some cost in speed; `principal_offset`
    (px, x right and y down) moves the principal point off the image centre, as real lenses sit."""
    width, height = size
    focal = (width / 2) / np.tan(np.deg2rad(fov_deg) / 2)
    dx, dy = principal_offset
    scene = Scene([], width, height, focal, focal, width / 2 + dx, height / 2 + dy)
    s = supersample
    K_fine = np.diag([s, s, 1.0]) @ scene.K
    atlas = texture_atlas(textures, seed, texture_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, (R, t) in enumerate(ring_poses(count, seed=seed, arc_deg=arc_deg)):
        fine = render_view(R, t, K_fine, width * s, height * s, atlas, bilinear=bilinear)
        pixels = sum(fine[i::s, j::s] for i in range(s) for j in range(s)) / (s * s)
        path = out_dir / f"view_{index:03d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
        scene.views.append(SceneView(path, R, t))
    return scene

# ruff: noqa: N803, N806 - R, t, K, U, V: the notation of the multiple-view geometry literature
"""Deterministic synthetic scenes with known cameras, for testing and benchmarking SfM without network.

Two sources:
- `render_textured_scene`: a small textured room (floor, walls, a box and a sphere) ray-cast in numpy
  from cameras on an arc around the box. Textures are scikit-image's bundled photos when that package
  is installed (realistic SIFT features), else procedural noise-and-blob images.
- `synthesize_colmap_scene`: pycolmap's own `synthesize_dataset` + `synthesize_images` (noise patches
  around random 3D points on black), with the poses it generated.

Poses follow COLMAP: world-to-camera `x_cam = R @ x_world + t`, camera x right, y down, z forward.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

TextureSource = Literal["auto", "photos", "procedural"]


@dataclass(frozen=True)
class SceneView:
    path: Path
    R: np.ndarray
    """World-to-camera rotation (3×3)."""
    t: np.ndarray
    """World-to-camera translation (3,)."""

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t


@dataclass(frozen=True)
class Scene:
    views: list[SceneView]
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @property
    def paths(self) -> list[Path]:
        return [v.path for v in self.views]

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name of the intrinsic matrix
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])


# -- the textured room ---------------------------------------------------------------------------

ROOM_HALF = 6.0
"""Half the room's side (m): walls far enough behind the box to give parallax, near enough to fill
the frame with texture."""

ROOM_HEIGHT = 4.0
# float32 throughout: a float64 numpy scalar would promote every per-ray array to float64 (2× slower).
BOX_MIN = np.array([-0.7, -0.45, 0.0], np.float32)
BOX_MAX = np.array([0.7, 0.45, 1.1], np.float32)
SPHERE_CENTER, SPHERE_RADIUS = np.array([1.2, 0.9, 0.45], np.float32), np.float32(0.45)
LIGHT = (np.array([0.4, -0.3, 0.87]) / np.linalg.norm([0.4, -0.3, 0.87])).astype(np.float32)

# Texture per surface (scikit-image name, RGB tint for grey photos); 14 distinct photos so that no
# pattern repeats across surfaces or within one (repeats, as in brick or text, give SIFT ambiguous
# matches that misplace cameras).
_PHOTOS: list[tuple[str, tuple[float, float, float]]] = [
    ("gravel", (1.0, 0.9, 0.75)),  # floor quarter 1
    ("grass", (0.75, 1.0, 0.7)),  # floor quarter 2
    ("retina", (1, 1, 1)),  # floor quarter 3
    ("hubble_deep_field", (1, 1, 1)),  # floor quarter 4
    ("rocket", (1, 1, 1)),  # wall -y
    ("coffee", (1, 1, 1)),  # wall +x
    ("immunohistochemistry", (1, 1, 1)),  # wall +y
    ("moon", (0.9, 0.9, 1.0)),  # wall -x
    ("astronaut", (1, 1, 1)),  # box -y
    ("chelsea", (1, 1, 1)),  # box +x
    ("camera", (1.0, 0.85, 0.85)),  # box +y
    ("clock", (0.85, 1.0, 0.9)),  # box -x
    ("page", (1.0, 1.0, 0.8)),  # box top
    ("coins", (0.9, 0.8, 1.0)),  # sphere
]


def _quads() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every planar surface as (origin, edge u, edge v), in the order of `_PHOTOS`."""
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


def _photo_textures(size: int) -> list[np.ndarray] | None:
    try:
        from skimage import data
    except ImportError:
        return None
    textures = []
    for name, tint in _PHOTOS:
        image = np.asarray(getattr(data, name)(), dtype=np.float32)
        if image.ndim == 2:
            image = image[..., None].repeat(3, axis=2)
        image = image[..., :3]
        # Stretch contrast: a few of the photos (moon, cell) are dim and would give few keypoints.
        lo, hi = np.percentile(image, [1, 99])
        image = np.clip((image - lo) * (255 / max(hi - lo, 1.0)), 0, 255) * np.asarray(tint, np.float32)
        textures.append(_resized(image, size))
    return textures


def _procedural_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Multi-octave colour noise plus random discs: blobs and corners at many scales for SIFT."""
    image = np.zeros((size, size, 3), np.float32)
    for cells, weight in ((4, 90.0), (16, 60.0), (64, 40.0)):
        image += weight * _resized(rng.random((cells, cells, 3), dtype=np.float32), size)
    for _ in range(150):
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, size / 16)
        x0, x1, y0, y1 = (int(np.clip(v, 0, size)) for v in (cx - r, cx + r + 1, cy - r, cy + r + 1))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        image[y0:y1, x0:x1][(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(image, 0, 255)


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32)).resize((size, size))
        )
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=2)


@functools.lru_cache(maxsize=2)
def _atlas(source: TextureSource, seed: int, size: int = 512) -> np.ndarray:
    """All surface textures stacked as one (surfaces, size, size, 3) uint8 array, in `_PHOTOS` order
    (cached: building it costs more than rendering a dozen views)."""
    textures = _photo_textures(size) if source != "procedural" else None
    rng = np.random.default_rng(seed)
    if textures is None:
        if source == "photos":
            raise RuntimeError("texture source 'photos' needs scikit-image")
        textures = [_procedural_texture(rng, size) for _ in _PHOTOS]
    else:
        # Fine grain, unique per surface, as real surfaces have: without it the smooth or repetitive
        # photos (coffee, clock, brick) leave whole views with too few distinctive keypoints.
        textures = [t * (0.75 + 0.5 * _noise(rng, size, (32, 128)))[..., None] for t in textures]
    atlas = np.clip(np.stack(textures), 0, 255).round().astype(np.uint8)
    atlas.flags.writeable = False
    return atlas


def _noise(rng: np.random.Generator, size: int, cells: tuple[int, ...]) -> np.ndarray:
    """Smooth value noise in [0, 1]: random grids of the given sizes, upsampled and averaged."""
    grids = [_resized(rng.random((c, c, 1), dtype=np.float32), size)[..., 0] for c in cells]
    return np.clip(sum(grids) / len(grids), 0, 1)


def look_at(center: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) of a camera at `center` looking at `target` with the world's z up."""
    forward = (target - center) / np.linalg.norm(target - center)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    return R, -R @ center


def ring_poses(
    count: int, *, seed: int, arc_deg: float = 360.0, radius: float = 4.0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cameras on an arc around the box at about eye height, in order, with a little seeded jitter
    (an exactly planar, equally spaced ring is a special case SfM never meets)."""
    rng = np.random.default_rng(seed)
    full = arc_deg >= 360.0
    angles = np.deg2rad(np.linspace(0.0, arc_deg, count, endpoint=not full)) - np.pi / 2
    poses = []
    for angle in angles:
        r = radius + rng.uniform(-0.3, 0.3)
        center = np.array([r * np.cos(angle), r * np.sin(angle), 1.7 + rng.uniform(-0.25, 0.25)])
        target = np.array([0.0, 0.0, 0.5]) + rng.uniform(-0.2, 0.2, 3)
        poses.append(look_at(center, target))
    return poses


SKY = -1
SPHERE = len(_PHOTOS) - 1

# Rays are kept as three flat float32 arrays (x, y, z components): numpy is several times faster on
# those than on (N, 3) arrays with per-row reductions, which keeps 30 views well under two seconds.
Rays = tuple[np.ndarray, np.ndarray, np.ndarray]


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
    """Ray-cast one view (H×W×3 float, 0–255): nearest hit wins, flat Lambert shading, grey sky."""
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
) -> Scene:
    """Render `count` JPEG views of the textured room from cameras on an arc; return the known poses
    and pinhole intrinsics. Deterministic for a given seed; `supersample`² rays per pixel anti-alias
    the texture (aliasing would make features flicker between views); `bilinear` smooths textures
    seen closer than one texel per pixel (large renders), at some cost in speed."""
    width, height = size
    focal = (width / 2) / np.tan(np.deg2rad(fov_deg) / 2)
    scene = Scene([], width, height, focal, focal, width / 2, height / 2)
    s = supersample
    K_fine = np.diag([s, s, 1.0]) @ scene.K
    atlas = _atlas(textures, seed, texture_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, (R, t) in enumerate(ring_poses(count, seed=seed, arc_deg=arc_deg)):
        fine = render_view(R, t, K_fine, width * s, height * s, atlas, bilinear=bilinear)
        pixels = sum(fine[i::s, j::s] for i in range(s) for j in range(s)) / (s * s)
        path = out_dir / f"view_{index:03d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)
        scene.views.append(SceneView(path, R, t))
    return scene


def write_noise_images(out_dir: Path, count: int, size: tuple[int, int], *, seed: int) -> list[Path]:
    """Unrelated images (independent colour noise blobs): they have features but match nothing."""
    rng = np.random.default_rng(seed + 1000)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        texture = _procedural_texture(rng, max(size))[: size[1], : size[0]]
        path = out_dir / f"noise_{index:03d}.jpg"
        Image.fromarray(texture.astype(np.uint8)).save(path, quality=92)
        paths.append(path)
    return paths


def write_flat_images(out_dir: Path, count: int, size: tuple[int, int], grey: int = 128) -> list[Path]:
    """Featureless images: one flat grey, no SIFT keypoint can be found."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = out_dir / f"flat_{index:03d}.jpg"
        Image.new("RGB", size, (grey, grey, grey)).save(path)
        paths.append(path)
    return paths


# -- pycolmap's own synthetic dataset -------------------------------------------------------------


def synthesize_colmap_scene(
    out_dir: Path, *, count: int = 10, size: tuple[int, int] = (640, 480), seed: int = 0, points: int = 100
) -> Scene:
    """Images from `pycolmap.synthesize_images` (a noise patch around a bright peak per 3D point,
    the same in every view) with the poses `pycolmap.synthesize_dataset` drew around the points. One
    pinhole camera. Patches are 31 px wide whatever the image size, so small images need few points:
    measured, 640×480 with 100 points gives 36–85 inliers per pair and registers all 10 views, while
    320×240 (any patch size) or 512×384 with 60 points leaves no model or a 2-view one."""
    import pycolmap

    width, height = size
    focal = 1.2 * max(size)
    pycolmap.set_random_seed(seed)
    options = pycolmap.SyntheticDatasetOptions(
        num_rigs=1,
        num_cameras_per_rig=1,
        num_frames_per_rig=count,
        num_points3D=points,
        num_points2D_without_point3D=0,
        camera_width=width,
        camera_height=height,
        camera_model_id=pycolmap.CameraModelId.PINHOLE,
        camera_params=[focal, focal, width / 2, height / 2],
        sensor_from_rig_rotation_stddev=0.0,
    )
    reconstruction = pycolmap.synthesize_dataset(options)
    out_dir.mkdir(parents=True, exist_ok=True)
    pycolmap.synthesize_images(pycolmap.SyntheticImageOptions(), reconstruction, out_dir)
    scene = Scene([], width, height, focal, focal, width / 2, height / 2)
    for image in sorted(reconstruction.images.values(), key=lambda im: im.name):
        pose = image.cam_from_world()
        scene.views.append(SceneView(out_dir / image.name, pose.rotation.matrix(), pose.translation))
    return scene


# -- comparing recovered cameras with the known ones ----------------------------------------------


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising ‖dst − (s R src + t)‖² over point pairs (N×3 each)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    U, D, Vt = np.linalg.svd(xd.T @ xs / len(src))
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    R = U @ S @ Vt
    scale = float(np.trace(np.diag(D) @ S) / xs.var(0).sum())
    return scale, R, mu_d - scale * R @ mu_s


def rotation_errors_deg(
    known: Sequence[tuple[np.ndarray, np.ndarray]], found: Sequence[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Per-camera rotation error (degrees) after aligning `found` to `known` world frames with a
    similarity fitted on the camera centres (Umeyama). Each item is a world-to-camera (R, t)."""
    centers_known = np.array([-R.T @ t for R, t in known])
    centers_found = np.array([-R.T @ t for R, t in found])
    _, R_align, _ = umeyama(centers_found, centers_known)
    errors = []
    for (R_k, _), (R_f, _) in zip(known, found, strict=True):
        # found maps world_f → cam; world_f = R_align^T world_k (up to scale/shift) → cam_from_world_k.
        R_fk = R_f @ R_align.T
        cos = (np.trace(R_fk @ R_k.T) - 1) / 2
        errors.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return np.array(errors)


def model_rotation_errors(scene: Scene, result: Any) -> np.ndarray:
    """Rotation error (degrees) of every registered view of an SfM result against the scene's known
    cameras, after alignment (`run_sfm` names images `<index:05d>_<input name>`)."""
    import pycolmap

    model = pycolmap.Reconstruction(result.model_dir)
    known, found = [], []
    for index, view in enumerate(scene.views):
        image = model.find_image_with_name(f"{index:05d}_{view.path.name}")
        if image is not None and image.has_pose:
            pose = image.cam_from_world()
            known.append((view.R, view.t))
            found.append((pose.rotation.matrix(), pose.translation))
    return rotation_errors_deg(known, found)

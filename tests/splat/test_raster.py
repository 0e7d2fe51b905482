"""The CPU rasterizer: the tile compositor renders what the dense reference renders (images, alphas,
depths, every gradient), follows gsplat's conventions, and feeds gsplat's DefaultStrategy.

Scenes are random but seeded: Gaussians in front of a pinhole camera, a few views around them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from daemon.handlers.splat import raster
from daemon.handlers.splat.raster import rasterize, rasterize_cpu
from daemon.handlers.splat.raster_cpu import Splats2D, bin_tiles, composite_tiles
from daemon.handlers.splat.raster_dense import composite_dense
from daemon.samples.gaussians import make_scene

PARAMS = ("means", "quats", "scales", "opacities", "colors")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These scenes are too small to gain from a second thread, and on a busy machine libgomp's
    spin-waiting made every parallel op wait for a descheduled thread (the file took 60 s, not 8)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def render(scene: dict[str, Any], compositor: Any = composite_tiles, **kwargs: Any) -> dict[str, Any]:
    """Render with fresh leaf tensors, back-propagate a fixed random weighting of images and alphas,
    and return the outputs and every gradient (including meta["means2d"].grad)."""
    leaves = {k: scene[k].clone().requires_grad_(True) for k in PARAMS}
    images, alphas, meta = rasterize_cpu(
        *(leaves[k] for k in PARAMS),
        scene["viewmats"],
        scene["Ks"],
        scene["width"],
        scene["height"],
        sh_degree=scene["sh_degree"],
        compositor=compositor,
        **kwargs,
    )
    g = torch.Generator().manual_seed(1)
    weights = torch.rand(images.shape, generator=g), torch.rand(alphas.shape, generator=g)
    ((images * weights[0]).sum() + (alphas * weights[1]).sum()).backward()
    grads = {k: v.grad for k, v in leaves.items()} | {"means2d": meta["means2d"].grad}
    return {"images": images.detach(), "alphas": alphas.detach(), "meta": meta, "grads": grads}


def assert_grads_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    for name, ref in want.items():
        if ref is None:  # e.g. colors in depth-only modes
            assert got[name] is None, name
            continue
        assert got[name] is not None and torch.isfinite(got[name]).all(), name
        # float32 and differently ordered sums: compare against the gradient's own scale
        scale = float(ref.abs().max())
        torch.testing.assert_close(got[name], ref, rtol=1e-3, atol=2e-5 * scale + 1e-7, msg=name)


SCENES = {
    "32x24, 300 Gaussians, 2 views": dict(n=300, width=32, height=24, cameras=2, seed=0),
    "40x30 (partial tiles), 800 Gaussians, SH 2": dict(
        n=800, width=40, height=30, cameras=2, seed=1, sh_degree=2
    ),
    "64x48, 2000 Gaussians": dict(n=2000, width=64, height=48, cameras=1, seed=2),
    "48x32, 1500 large opaque Gaussians": dict(
        n=1500, width=48, height=32, cameras=1, seed=3, dense_cover=True
    ),
}


@pytest.fixture(scope="module", params=list(SCENES))
def pair(request: pytest.FixtureRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    scene = make_scene(**SCENES[request.param])
    return render(scene), render(scene, composite_dense)


def test_tile_compositor_renders_what_the_dense_reference_renders(pair):
    # Given the same scene rendered by the tile compositor and the dense reference
    tile, dense = pair
    # Then images and alphas are equal to float precision, and the scene is not trivially empty
    assert dense["alphas"].mean() > 0.3
    torch.testing.assert_close(tile["images"], dense["images"], rtol=0, atol=1e-5)
    torch.testing.assert_close(tile["alphas"], dense["alphas"], rtol=0, atol=1e-5)
    # And so are the gradients w.r.t. every parameter and the 2D means (the densification signal)
    assert_grads_close(tile["grads"], dense["grads"])
    assert tile["grads"]["means2d"].abs().sum() > 0


def test_meta_has_gsplat_non_packed_layout(pair):
    tile, _ = pair
    meta = tile["meta"]
    c, n = meta["means2d"].shape[:2]
    assert meta["gaussian_ids"] is None and meta["n_cameras"] == c
    assert meta["radii"].shape == (c, n, 2) and meta["radii"].dtype == torch.int32
    assert meta["depths"].shape == (c, n) and meta["conics"].shape == (c, n, 3)
    assert meta["isect_offsets"].shape == (c, meta["tile_height"], meta["tile_width"])
    assert meta["flatten_ids"].dtype == torch.int32 and meta["tiles_per_gauss"].shape == (c, n)


def test_projection_agrees_with_gsplats_torch_projection():
    # Given gsplat's pure-torch projection (3.33 σ boxes, no opacity culling) of a scene
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    scene = make_scene(500, 40, 30, cameras=2, seed=12)
    meta = render(scene)["meta"]
    covars, _ = _quat_scale_to_covar_preci(scene["quats"], scene["scales"], compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        scene["means"], covars, scene["viewmats"], scene["Ks"], 40, 30
    )
    # Then every Gaussian we keep, they keep, at the same place, depth and shape
    ours = (meta["radii"] > 0).all(-1)
    assert ours.sum() > 100 and not (ours & ~(radii > 0).all(-1)).any()
    for name, theirs in (("means2d", means2d), ("depths", depths), ("conics", conics)):
        torch.testing.assert_close(meta[name][ours].detach(), theirs[ours], msg=name)
    # And our boxes are at most theirs: opacity-aware like gsplat's CUDA kernel (extent ≤ 3.33 σ)
    assert (meta["radii"][ours] <= radii[ours]).all() and (meta["radii"][ours] < radii[ours]).any()


def test_tile_bins_equal_gsplats_reference_intersection():
    # Given a rendered scene whose width is not a multiple of the tile size
    from gsplat.cuda._torch_impl import _isect_offset_encode, _isect_tiles

    scene = make_scene(200, 40, 30, cameras=2, seed=11)
    meta = render(scene, tile_size=16)["meta"]
    # When gsplat's pure-torch isect_tiles / isect_offset_encode bin the same projection
    with torch.no_grad():
        per_gauss, isect_ids, flatten_ids = _isect_tiles(
            meta["means2d"], meta["radii"], meta["depths"], 16, meta["tile_width"], meta["tile_height"]
        )
        offsets = _isect_offset_encode(isect_ids, 2, meta["tile_width"], meta["tile_height"])
    # Then our bins, keys and offsets are theirs, bit for bit
    assert torch.equal(meta["tiles_per_gauss"], per_gauss)
    assert torch.equal(meta["isect_ids"], isect_ids)
    assert torch.equal(meta["flatten_ids"], flatten_ids)
    assert torch.equal(meta["isect_offsets"], offsets.reshape(meta["isect_offsets"].shape))


@pytest.mark.parametrize("mode", ["D", "ED", "RGB+D", "RGB+ED"])
def test_depth_modes_match_dense(mode):
    # Given a small scene with a background (depth channels get background 0, like gsplat)
    scene = make_scene(300, 32, 24, cameras=2, seed=3)
    bg = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.0, 0.5]])
    # When rendered in a depth mode by both compositors
    tile = render(scene, render_mode=mode, backgrounds=bg)
    dense = render(scene, composite_dense, render_mode=mode, backgrounds=bg)
    # Then the outputs have gsplat's channel count and agree, gradients included
    assert tile["images"].shape[-1] == {"D": 1, "ED": 1, "RGB+D": 4, "RGB+ED": 4}[mode]
    torch.testing.assert_close(tile["images"], dense["images"], rtol=1e-5, atol=1e-5)
    assert_grads_close(tile["grads"], dense["grads"])
    if mode in ("ED", "RGB+ED"):  # expected depth lies between the nearest and farthest Gaussian
        d = tile["images"][..., -1][tile["alphas"][..., 0] > 0.5]
        assert d.min() > 1.5 and d.max() < 7.0


def test_backgrounds_fill_what_the_gaussians_leave_uncovered():
    # Given a scene rendered without and with per-view backgrounds
    scene = make_scene(300, 32, 24, cameras=2, seed=4)
    bg = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.0, 0.5]])
    plain, with_bg = render(scene), render(scene, backgrounds=bg)
    # Then the background adds (1 - alpha) · background, per view
    expected = plain["images"] + (1 - plain["alphas"]) * bg[:, None, None, :]
    torch.testing.assert_close(with_bg["images"], expected, rtol=0, atol=1e-6)
    # And with no Gaussian in view the image is exactly the background
    scene["means"][:, 2] = -scene["means"][:, 2]  # everything behind the cameras
    empty = render(scene, backgrounds=bg)
    assert torch.equal(empty["images"], bg[:, None, None, :].expand_as(empty["images"]))
    assert torch.equal(empty["alphas"], torch.zeros_like(empty["alphas"]))


def test_gaussians_behind_the_camera_or_off_screen_are_ignored():
    # Given a scene, and the same scene plus Gaussians behind the camera, at its centre (z = 0), just
    # closer than the near plane, and far outside the image
    scene = make_scene(300, 32, 24, cameras=1, seed=5)
    extra = {k: scene[k][:4].clone() for k in PARAMS}
    extra["means"] = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.005], [50.0, 0.0, 3.0]])
    extra["scales"] = torch.full((4, 3), 0.3)
    extra["opacities"] = torch.full((4,), 0.9)
    bigger = scene | {k: torch.cat([scene[k], extra[k]]) for k in PARAMS}
    # When both are rendered
    base, more = render(scene), render(bigger)
    # Then the images are identical, the extras are culled, and their gradients are zero, not NaN
    assert torch.equal(base["images"], more["images"]) and torch.equal(base["alphas"], more["alphas"])
    assert (more["meta"]["radii"][0, 300:] == 0).all()
    for name in PARAMS:
        assert torch.equal(more["grads"][name][300:], torch.zeros_like(more["grads"][name][300:])), name
        torch.testing.assert_close(more["grads"][name][:300], base["grads"][name], rtol=1e-6, atol=1e-6)


def test_a_gaussian_straddling_tile_corners_renders_seamlessly():
    # Given one round Gaussian centred on the corner shared by four 16 px tiles, 8 px across
    scene = make_scene(1, 32, 32, cameras=1)
    scene |= {
        "means": torch.tensor([[0.0, 0.0, 4.0]]),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        "scales": torch.full((1, 3), 0.2),
        "opacities": torch.tensor([0.8]),
        "colors": torch.tensor([[1.0, 0.5, 0.25]]),
        "viewmats": torch.eye(4)[None],
        "Ks": torch.tensor([[[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]]]),
    }
    out = render(scene, tile_size=16)
    alpha = out["alphas"][0, ..., 0]
    # Then it covers all four tiles, and the image is mirror-symmetric across both tile borders
    assert out["meta"]["tiles_per_gauss"].item() == 4
    assert torch.equal(alpha, alpha.flip(0)) and torch.equal(alpha, alpha.flip(1))
    # And each pixel is exactly the closed form min(0.999, o·exp(-sigma)), 0 below 1/255
    var = (0.2 * 32 / 4) ** 2 + 0.3  # projected variance + eps2d
    xs = torch.arange(32) + 0.5 - 16
    sigma = 0.5 * (xs[None, :] ** 2 + xs[:, None] ** 2) / var
    want = (0.8 * torch.exp(-sigma)).clamp_max(0.999)
    want = torch.where(want >= 1 / 255, want, 0.0)
    torch.testing.assert_close(alpha, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["images"][0], alpha[..., None] * torch.tensor([1.0, 0.5, 0.25]))


def test_tile_size_does_not_change_the_image():
    scene = make_scene(400, 40, 30, cameras=1, seed=6)
    a, b = render(scene, tile_size=16), render(scene, tile_size=8)  # gsplat's and our CPU default
    torch.testing.assert_close(a["images"], b["images"], rtol=0, atol=1e-6)
    assert_grads_close(a["grads"], b["grads"])


def test_same_inputs_give_bit_identical_outputs():
    scene = make_scene(500, 40, 30, cameras=2, seed=7)
    first, second = render(scene), render(scene)
    assert torch.equal(first["images"], second["images"]) and torch.equal(first["alphas"], second["alphas"])
    for name in first["grads"]:
        assert torch.equal(first["grads"][name], second["grads"][name]), name


def test_custom_backward_passes_gradcheck():
    # Given a tiny float64 scene where five Gaussians stack on one spot (pixels saturate: T < 1e-4),
    # one of them fully opaque at a pixel centre (the 0.999 clamp), on 8 px tiles with partial edges
    g = torch.Generator().manual_seed(8)
    width, height, n = 20, 18, 9
    means2d = torch.rand(1, n, 2, generator=g, dtype=torch.float64) * torch.tensor([width, height])
    means2d[0, :5] = torch.tensor([9.5, 8.5]) + 0.3 * torch.rand(5, 2, generator=g, dtype=torch.float64)
    means2d[0, 0] = torch.tensor([9.5, 8.5])
    var = 1.0 + 6.0 * torch.rand(1, n, 2, generator=g, dtype=torch.float64)
    rho = 0.6 * (torch.rand(1, n, generator=g, dtype=torch.float64) - 0.5)
    cov_xy = rho * var.prod(-1).sqrt()
    det = var.prod(-1) - cov_xy**2
    conics = torch.stack([var[..., 1] / det, -cov_xy / det, var[..., 0] / det], -1)
    opacities = 0.3 + 0.65 * torch.rand(1, n, generator=g, dtype=torch.float64)
    opacities[0, :5] = torch.tensor([1.0, 0.95, 0.95, 0.95, 0.95])
    colors = torch.rand(1, n, 3, generator=g, dtype=torch.float64)
    depths = 1.0 + torch.rand(1, n, generator=g, dtype=torch.float64)
    radii = torch.ceil(3.33 * var.sqrt()).int()
    bins = bin_tiles(Splats2D(means2d, conics, colors, opacities, depths, radii), width, height, tile_size=8)

    def composite(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, c, col, o = tensors
        return composite_tiles(Splats2D(m, c, col, o, depths, radii), bins, width, height)

    inputs = tuple(x.clone().requires_grad_(True) for x in (means2d, conics, colors, opacities))
    _, alphas = composite(*inputs)
    # The stack leaves T ≈ (1 - 0.999)·0.1⁴ ≪ 1e-4 at its centre, so the stop rule is exercised there
    assert alphas.max() > 0.999
    # Then the analytic backward matches finite differences
    assert torch.autograd.gradcheck(composite, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_auto_backend_renders_on_cpu_here(monkeypatch):
    # Given no CUDA, "auto" must not reach gsplat's CUDA rasterizer
    import gsplat

    monkeypatch.setattr(gsplat, "rasterization", lambda *a, **k: pytest.fail("gsplat path taken"))
    scene = make_scene(200, 32, 24, cameras=1, seed=9)
    args = [scene[k] for k in (*PARAMS, "viewmats", "Ks", "width", "height")]
    images, alphas, meta = rasterize(*args, backend="auto")
    assert torch.equal(images, rasterize(*args, backend="cpu")[0])
    assert images.shape == (1, 24, 32, 3) and alphas.shape == (1, 24, 32, 1)
    # And forcing gsplat on CPU tensors is refused plainly
    with pytest.raises(ValueError, match="CUDA"):
        rasterize(*args, backend="gsplat")


def test_gsplat_branch_passes_only_arguments_gsplat_accepts(monkeypatch):
    # Given a stand-in for gsplat.rasterization with its exact signature (no CUDA here to run it)
    import inspect

    import gsplat

    calls = []
    signature = inspect.signature(gsplat.rasterization)

    def fake(*args, **kwargs):
        calls.append(signature.bind(*args, **kwargs).arguments)  # raises on any unknown argument
        return None, None, {"means2d": torch.zeros(1)}

    monkeypatch.setattr(gsplat, "rasterization", fake)
    scene = make_scene(10, 32, 24, cameras=1)
    args = [scene[k] for k in (*PARAMS, "viewmats", "Ks", "width", "height")]
    # When the CUDA branch is forced (the device check fooled: tensors claim to be on CUDA)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    rasterize(*args, backend="gsplat", render_mode="RGB+D", tile_size=8, radius_clip=0.5)
    # Then gsplat gets non-packed mode and every option of ours under its own name
    assert calls[0]["packed"] is False
    assert (calls[0]["render_mode"], calls[0]["tile_size"], calls[0]["radius_clip"]) == ("RGB+D", 8, 0.5)


def test_gsplat_default_strategy_runs_on_our_meta():
    # Given a tiny trainable model with gsplat's parameter layout, optimizers and DefaultStrategy
    from gsplat import DefaultStrategy

    scene = make_scene(300, 32, 24, cameras=1, seed=10, sh_degree=1)
    params = torch.nn.ParameterDict(
        {
            "means": scene["means"],
            "scales": torch.log(scene["scales"]),
            "quats": scene["quats"],
            "opacities": torch.logit(scene["opacities"]),
            "sh0": scene["colors"][:, :1],
            "shN": scene["colors"][:, 1:],
        }
    )
    optimizers = {k: torch.optim.Adam([{"params": p, "lr": 1e-3, "name": k}]) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=2, grow_grad2d=1e-9, grow_scale3d=1e-9)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state()
    target = torch.rand(1, 24, 32, 3, generator=torch.Generator().manual_seed(0))
    # When it trains a few steps through our CPU rasterizer
    for step in range(3):
        images, _, info = raster.rasterize(
            params["means"],
            params["quats"],
            torch.exp(params["scales"]),
            torch.sigmoid(params["opacities"]),
            torch.cat([params["sh0"], params["shN"]], 1),
            scene["viewmats"],
            scene["Ks"],
            32,
            24,
            sh_degree=1,
        )
        strategy.step_pre_backward(params, optimizers, state, step, info)
        (images - target).abs().mean().backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        strategy.step_post_backward(params, optimizers, state, step, info)
    # Then it densified (step 2 splits every large, visible Gaussian) without error
    assert len(params["means"]) > 300
    assert all(len(p) == len(params["means"]) for p in params.values())

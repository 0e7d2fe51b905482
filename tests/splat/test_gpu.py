"""On a CUDA host: gsplat's CUDA rasterizer and our CPU backend render the same image, and the trainer
picks gsplat by itself and learns. Skipped where there is no GPU (this CI): the CPU path is covered by
test_raster.py and test_train.py, which exercise the same `rasterize` interface."""

from __future__ import annotations

import pytest
import torch

from daemon.handlers.splat.raster import rasterize
from daemon.samples.gaussians import make_scene
from tests.splat.test_train import make_scene as make_training_scene
from tests.splat.test_train import small_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gsplat_cuda_and_our_cpu_backend_render_the_same_image():
    scene = make_scene(n=2000, width=64, height=48, cameras=1, seed=2)
    args = [scene[k] for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")]
    cpu, cpu_alpha, _ = rasterize(*args, scene["width"], scene["height"], backend="cpu")
    cuda_args = [a.cuda() for a in args]
    gpu, gpu_alpha, meta = rasterize(*cuda_args, scene["width"], scene["height"], backend="auto")
    assert gpu.is_cuda and "gaussian_ids" in meta
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)
    torch.testing.assert_close(gpu_alpha.cpu(), cpu_alpha, atol=2e-3, rtol=0)


def test_trainer_on_cuda_uses_gsplat_and_learns():
    from daemon.handlers.splat.train import Camera, Trainer

    cams, points, colors = make_training_scene()
    cuda_cams = [Camera(c.name, c.viewmat.cuda(), c.K.cuda(), c.image.cuda()) for c in cams]
    trainer = Trainer(cuda_cams[1:], points.cuda(), colors.cuda(), small_config(steps=200, sh0_lr=0.02))
    before = trainer.evaluate(cuda_cams[:1])["psnr"]
    trainer.train()
    assert trainer.params["means"].is_cuda
    assert trainer.evaluate(cuda_cams[:1])["psnr"] > before + 5.0

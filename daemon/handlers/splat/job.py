"""The `splat` and `splat_video` jobs, stage by stage: download → images (photos) or frames (a
video, see frames.py) → sfm → train (train_stage.py) → evaluate → export.

Each stage is a function over the job's `Workspace` that records what it produced, so a run over a
folder where some stages finished skips them (see workspace.py). Imported only inside the work-horse:
it pulls in torch, gsplat and pycolmap.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ...errors import JobError
from ..base import Context
from . import frames as video_frames
from . import resume
from .bundle import write_bundle, write_cameras_json
from .export import write_compressed, write_ply
from .inputs import ImageOptions, prepare_images
from .params import SplatParams
from .params_video import SplatVideoParams
from .report import save_curves, save_preview
from .scene import Scene, load_scene
from .sfm import run_sfm
from .sfm_matching import VIDEO_MATCHER, is_ordered_walk
from .sfm_options import SfmOptions
from .train import Camera
from .train_stage import eval_views, memory_guard, train, trainer_with_model
from .workspace import Workspace

log = logging.getLogger(__name__)

OUTPUT_TYPES = {
    "splat.ply": "application/x-ply",
    "splat.compressed.ply": "application/x-ply",
    "splat.splat": "application/octet-stream",
    "preview.png": "image/png",
    "curves.png": "image/png",
    "cameras.json": "application/json",
}


def run(ctx: Context) -> None:
    params: SplatParams = ctx.params
    video = isinstance(params, SplatVideoParams)
    ws = Workspace(ctx.workdir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resume.restore(ctx, ws)
    with ctx.stage("download"):
        files = download(ctx, ws)
    if isinstance(params, SplatVideoParams):
        with ctx.stage("frames"):
            choose = lambda: video_frames.choose_frames(ws, files[0], params, ctx.progress)  # noqa: E731
            images = checkpointed(ctx, ws, "frames", choose)
    else:
        with ctx.stage("images"):
            normalise = lambda: normalise_images(ws, files, params, ctx.progress)  # noqa: E731
            images = checkpointed(ctx, ws, "images", normalise)
    with ctx.stage("sfm"):
        sfm = checkpointed(ctx, ws, "sfm", lambda: reconstruct(ws, images, params, ctx, video=video))
    with ctx.stage("train"):
        scene = load_scene(ws.sfm.undistorted_model, ws.sfm.undistorted_images,
                           holdout_every=params.holdout_every, device=device)  # fmt: skip
        training = checkpointed(ctx, ws, "train", lambda: train(ws, scene, params, ctx))
    with ctx.stage("evaluate"):
        metrics = evaluate(ws, scene, params)
    with ctx.stage("export"):
        started = time.monotonic()
        outputs = export(ws, scene, params, images["sources"])
        for name, path in outputs.items():
            ctx.put_output(name, path, OUTPUT_TYPES[name])
        timings = {**ctx.timings, "export": round(time.monotonic() - started, 3)}
        manifest = build_manifest(ctx, images, sfm, training, metrics, timings)
        manifest_path = ws.outputs / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        ctx.put_output("manifest.json", manifest_path, "application/json")
        ctx.result = manifest
        if params.bundle:
            store_bundle(ctx, ws, manifest)


# -- stages ------------------------------------------------------------------------------------------


def checkpointed(
    ctx: Context, ws: Workspace, stage: str, run_stage: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run a stage; if it did work (not reused from a record), checkpoint what it produced."""
    fresh = ws.finished(stage) is None
    summary = run_stage()
    if fresh:
        resume.save_stage(ctx, ws, stage)
    return summary


def download(ctx: Context, ws: Workspace) -> list[Path]:
    done = ws.reused("download")
    if done is not None:
        return [ws.downloads / name for name in done["files"]]
    params: SplatParams = ctx.params
    files = (
        video_frames.fetch_video(ctx, params) if isinstance(params, SplatVideoParams) else ctx.fetch_inputs()
    )
    ws.record("download", {"files": [p.name for p in files]})
    return list(files)


def normalise_images(
    ws: Workspace, files: list[Path], params: SplatParams, progress: Callable[[float], None]
) -> dict[str, Any]:
    done = ws.reused("images")
    if done is not None:
        return done
    options = ImageOptions(max_image_size=params.max_image_size, min_images=params.min_images)
    prepared = prepare_images(files, ws.images, options, progress=progress)
    for rejected in prepared.rejected:
        log.warning("image skipped: %s", rejected)
    summary = {
        "given": len(files),
        "used": len(prepared.paths),
        "paths": [p.name for p in prepared.paths],
        "sources": prepared.sources,
        "devices": prepared.devices,
        "taken": prepared.taken,
        "sizes": [list(size) for size in prepared.sizes],
        "duplicates": prepared.duplicates,
        "rejected": [asdict(r) for r in prepared.rejected],
    }
    ws.record("images", summary)
    return summary


def sfm_options(images: dict[str, Any], params: SplatParams, *, video: bool, threads: int) -> SfmOptions:
    """The SfM options of a job: its params, photos in input order as a walk when they were taken
    so, and video frames as one camera, matched along the sequence, SIFT's octave by the auto rule
    (undoubled on compressed, noisy frames: sfm_options.first_octave). `threads` 0: all cores."""
    options = SfmOptions(
        min_registered_ratio=params.min_registered_ratio,
        cameras=params.cameras,
        ordered=is_ordered_walk(images["sources"], images.get("taken")),
    )
    if video:
        options = replace(options, cameras="single", matcher=VIDEO_MATCHER, first_octave=None)
    return replace(options, num_threads=threads) if threads else options


def reconstruct(
    ws: Workspace, images: dict[str, Any], params: SplatParams, ctx: Context, *, video: bool = False
) -> dict[str, Any]:
    """SfM over the photos, or over a video's frames: those share one camera and come in order, so
    they are matched along the sequence (with loop closure) rather than every pair."""
    done = ws.reused("sfm")
    if done is not None:
        return done
    import pycolmap

    pycolmap.logging.minloglevel = 2  # warnings and errors only: COLMAP's info lines flood journald
    # RANSAC and the mapper draw from COLMAP's generator: seeded, SfM is reproducible when it runs
    # on one thread (SFM_THREADS=1); with more, bundle adjustment sums in varying order.
    pycolmap.set_random_seed(params.seed)
    threads = ctx.settings.sfm_threads if ctx.settings is not None else 0
    options = sfm_options(images, params, video=video, threads=threads)
    paths = [ws.images / name for name in images["paths"]]
    # (a checkpoint of the images stage from before devices were recorded has none: grouped by size)
    result = run_sfm(paths, ws.sfm.root, options, devices=images.get("devices"), progress=ctx.progress)
    summary = {
        "registered": result.registered,
        "total": result.total,
        "cameras": result.cameras,
        "camera_check": result.camera_check,
        "matcher": result.matcher,
        "principal_point": result.principal_point,
        "sift": result.sift,
        "pycolmap": result.pycolmap,
        "points": result.points,
        "mean_reprojection_error_px": round(result.mean_reprojection_error, 4),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
    }
    ws.record("sfm", summary)
    return summary


def evaluate(ws: Workspace, scene: Scene, params: SplatParams) -> dict[str, Any]:
    done = ws.reused("evaluate")
    if done is not None:
        return done
    trainer, _ = trainer_with_model(ws, scene, params)
    with memory_guard("evaluation", params):
        scores = trainer.evaluate(eval_views(scene))
    summary = {
        **{k: round(v, 4) for k, v in scores.items()},
        "views": len(eval_views(scene)),
        "evaluated_on": "held-out views" if scene.test else "training views (too few images to hold out)",
    }
    log.info("evaluation on %d %s: PSNR %.2f dB, SSIM %.4f", summary["views"], summary["evaluated_on"],
             scores["psnr"], scores["ssim"])  # fmt: skip
    ws.record("evaluate", summary)
    return summary


def export(ws: Workspace, scene: Scene, params: SplatParams, sources: list[str]) -> dict[str, Path]:
    """Write every output file; returns name → path (the manifest is written by the caller).
    `sources[i]` names what image i came from (a photo, or a video frame and its time)."""
    ws.outputs.mkdir(parents=True, exist_ok=True)
    paths = {name: ws.outputs / name for name in OUTPUT_TYPES}
    trainer, history = trainer_with_model(ws, scene, params)
    try:
        with memory_guard("export", params):
            write_ply(paths["splat.ply"], trainer.params)
            write_compressed(paths["splat.compressed.ply"], trainer.params, "ply_compressed")
            write_compressed(paths["splat.splat"], trainer.params, "splat")
            with torch.no_grad():
                save_preview(trainer.render(scene.train[0])[0], paths["preview.png"])
            save_curves(history, paths["curves.png"])
            views = [(c, False) for c in scene.train] + [(c, True) for c in scene.test]
            write_cameras_json(paths["cameras.json"], views, sfm_sources(views, sources))
    except JobError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        raise JobError(f"export failed: {type(exc).__name__}: {exc}", code="export_failed") from exc
    return paths


def sfm_sources(views: list[tuple[Camera, bool]], sources: list[str]) -> dict[str, str]:
    """Image name → its source: run_sfm names image i `<i:05d>_<name>`."""
    found = {}
    for camera, _ in views:
        index = camera.name.split("_", 1)[0]
        if index.isdigit() and int(index) < len(sources):
            found[camera.name] = sources[int(index)]
    return found


def store_bundle(ctx: Context, ws: Workspace, result: dict[str, Any]) -> None:
    """bundle.zip, after the manifest it contains; the job's `result` lists it beside the others (the
    manifest inside cannot list the zip that holds it)."""
    path = ws.outputs / "bundle.zip"
    try:
        write_bundle(path, ws.outputs, ws.sfm.undistorted_model)
    except (OSError, RuntimeError, ValueError) as exc:
        raise JobError(
            f"export failed: bundle.zip: {type(exc).__name__}: {exc}", code="export_failed"
        ) from exc
    stored = ctx.put_output("bundle.zip", path, "application/zip")
    result["outputs"]["bundle.zip"] = {
        "size": stored.size,
        "sha256": stored.sha256,
        "content_type": stored.content_type,
    }


# -- the manifest ------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process (the work-horse), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def build_manifest(
    ctx: Context,
    images: dict[str, Any],
    sfm: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    """What the customer's app and the operator read about the result; also the job's `result`."""
    params: SplatParams = ctx.params
    initial = training["initial"]
    if isinstance(params, SplatVideoParams):
        source = {"frames": video_frames.manifest_section(images)}
    else:
        source = {"images": {k: images[k] for k in ("given", "used", "duplicates", "rejected")}}
    return {
        "job_id": ctx.job_id,
        "kind": ctx.spec.kind,
        "attempt": ctx.attempt,
        **source,
        "sfm": sfm,
        "training": {
            **{k: v for k, v in training.items() if k != "initial"},
            "preset": params.preset,
            "sh_degree": params.sh_degree,
            "max_image_size": params.max_image_size,
        },
        "metrics": {
            **metrics,
            "initial_psnr": round(initial["psnr"], 4),
            "initial_ssim": round(initial["ssim"], 4),
        },
        "timings_s": timings,
        "peak_rss_mb": peak_rss_mb(),
        "outputs": {
            name: {"size": stored.size, "sha256": stored.sha256, "content_type": stored.content_type}
            for name, stored in ctx.outputs.items()
        },
    }

#!/usr/bin/env python3
"""`make demo`: the main job (photos → splat) end to end on CPU, on embedded defaults: no AWS, no Supabase.

- Redis: REDIS_URL if set, else a private redis-server started here on a free port (and stopped).
- Inputs: 24 photos of a generated textured room (daemon/samples: known cameras on a ring, 320×240),
  written to var/demo/files and served on 127.0.0.1; the daemon downloads them like any customer URL
  (URL_ALLOW_NETWORKS lets it reach loopback for this demo only).
- Enqueue with `python -m daemon enqueue`, then run `python -m daemon worker --burst` until the queue
  is empty. The progress row is kept in var/state/jobs/<job id>.json; outputs (splat.ply, the compressed
  variants, preview.png, curves.png, manifest.json) land in var/outputs/<job id>/.

About 3 minutes on 2 CPU cores (300 training steps); `--steps` and `--views` change that,
`--kind splat_video` runs the video job on a generated phone video (a 12 s orbit filmed upright, stored
sideways with a display rotation, as phones do; `bundle.zip` on), `--kind mesh` the mesh job on a
generated model (`--model scan`: a textured stone of `--triangles` triangles, default 200,000; `cad`: 400
coloured parts; `textures`: four parts with a 2048 px texture each), `--kind pointcloud` the point-cloud
job on a generated drone lidar survey (`--points`, default 200,000, as a LAZ in UTM 33N with 0.2% noise),
and `--kind inspect` the small job.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
JOB_ID = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_private_redis() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="demo-redis-")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            data_dir,
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("could not start a private redis-server (is it installed? `make test` installs it)")


def make_sample_photos(folder: Path, count: int = 8) -> list[str]:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        img = Image.new("RGB", (320, 240), (30 + 20 * i, 90, 160))
        draw = ImageDraw.Draw(img)
        draw.rectangle((40 + 10 * i, 60, 200 + 10 * i, 180), fill=(240, 200 - 15 * i, 40))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=88)
        name = f"IMG_{i + 1:04d}.jpg"
        (folder / name).write_bytes(out.getvalue())
        names.append(name)
    return names


def serve(folder: Path) -> ThreadingHTTPServer:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def splat_inputs(folder: Path, base: str, views: int) -> list[dict[str, str]]:
    sys.path.insert(0, str(ROOT))
    from daemon.samples.room import render_textured_scene

    scene = render_textured_scene(folder, count=views, size=(320, 240), seed=0)
    return [{"url": f"{base}/{p.name}", "name": p.name} for p in scene.paths]


def video_inputs(folder: Path, base: str) -> list[dict[str, str]]:
    sys.path.insert(0, str(ROOT))
    from daemon.samples.video import write_orbit_video

    video = write_orbit_video(folder / "phone.mp4", frames=120, size=(240, 320), rotation=90)
    return [{"url": f"{base}/{video.path.name}", "name": video.path.name}]


def mesh_inputs(folder: Path, base: str, model: str, triangles: int) -> list[dict[str, str]]:
    sys.path.insert(0, str(ROOT))
    from daemon.samples import models

    scene = {
        "scan": lambda: models.scan(triangles=triangles, texture_size=2048),
        "cad": lambda: models.cad(parts=400),
        "textures": lambda: models.textured_set(textures=4, texture_size=2048),
    }[model]()
    models.write_glb(scene, str(folder / f"{model}.glb"))
    return [{"url": f"{base}/{model}.glb", "name": f"{model}.glb"}]


def survey_inputs(folder: Path, base: str, points: int) -> list[dict[str, str]]:
    sys.path.insert(0, str(ROOT))
    from daemon.samples import cloud_files, clouds

    cloud_files.write_las(clouds.survey_chunks(points, seed=1), folder / "survey.laz")
    return [{"url": f"{base}/survey.laz", "name": "survey.laz"}]


def build_spec(args: argparse.Namespace, files: Path, base: str) -> dict[str, object]:
    if args.kind == "pointcloud":
        inputs = survey_inputs(files, base, args.points)
        params: dict[str, object] = {}
    elif args.kind == "mesh":
        inputs = mesh_inputs(files, base, args.model, args.triangles)
        params = {"lod_targets": [0.5, 0.1]}
    elif args.kind == "inspect":
        names = make_sample_photos(files)
        inputs = [{"url": f"{base}/{name}", "name": name} for name in names]
        params = {}
    elif args.kind == "splat_video":
        inputs = video_inputs(files, base)
        params = {"iterations": args.steps, "fps": 2.5, "bundle": True}
    else:
        inputs = splat_inputs(files, base, args.views)
        params = {"iterations": args.steps}
    return {"spec_version": 1, "job_id": JOB_ID, "kind": args.kind, "inputs": inputs, "params": params}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument(
        "--kind", choices=("splat", "splat_video", "mesh", "pointcloud", "inspect"), default="splat"
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps (splat); default 300")
    parser.add_argument("--views", type=int, default=24, help="photos of the scene (splat); default 24")
    parser.add_argument("--model", choices=("scan", "cad", "textures"), default="scan", help="(mesh)")
    parser.add_argument("--triangles", type=int, default=200_000, help="triangles of the scan (mesh)")
    parser.add_argument("--points", type=int, default=200_000, help="points of the survey (pointcloud)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    env = dict(os.environ)
    redis_proc = None
    if not env.get("REDIS_URL"):
        redis_proc, env["REDIS_URL"] = start_private_redis()
        print(f"demo: started a private Redis at {env['REDIS_URL']}")
    env.setdefault("URL_ALLOW_NETWORKS", "127.0.0.1/32")
    env.setdefault("STORAGE_BACKEND", "local")
    env.setdefault("PROGRESS_MIN_INTERVAL_S", "0.5")
    env["PYTHONUNBUFFERED"] = "1"
    files = VAR / "demo" / "files"
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir(parents=True)
    httpd = serve(files)
    try:
        spec = build_spec(args, files, f"http://127.0.0.1:{httpd.server_address[1]}")
        inputs = spec["inputs"]
        assert isinstance(inputs, list)
        run = partial(subprocess.run, cwd=ROOT, env=env, check=True)
        kinds = {"splat_video": "1 video", "mesh": f"1 model: {args.model}",
                 "pointcloud": f"1 survey: {args.points:,} points"}  # fmt: skip
        what = kinds.get(args.kind, f"{len(inputs)} photos")
        print(f"demo: enqueue {JOB_ID} ({args.kind}, {what})")
        run([sys.executable, "-m", "daemon", "enqueue", json.dumps(spec)])
        print("demo: run the worker until the queue is empty")
        run([sys.executable, "-m", "daemon", "worker", "--burst"])
        return report(env)
    finally:
        httpd.shutdown()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)


def shown(path: Path) -> Path:
    """`path` relative to the repository when it is inside it (the defaults under var/)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def report(env: dict[str, str]) -> int:
    row_path = ROOT / env.get("DAEMON_STATE_DIR", "var/state") / "jobs" / f"{JOB_ID}.json"
    row = json.loads(row_path.read_text())
    print(f"\ndemo: final progress row: {shown(row_path)}")
    if row["status"] != "completed":
        print(json.dumps(row, indent=2, sort_keys=True))
        return 1
    out = ROOT / env.get("DAEMON_OUTPUT_DIR", "var/outputs") / JOB_ID
    result = row.get("result") or {}
    if "metrics" in result:
        m, sfm, t = result["metrics"], result["sfm"], result["training"]
        if "frames" in result:
            f, video = result["frames"], result["frames"]["video"]
            print(f"demo: video {video['codec']} {video['width']}x{video['height']}, rotation "
                  f"{video['rotation']}°, {video['duration_s']:.1f} s: {f['chosen']} frames chosen "
                  f"of {video['frames_decoded']}, {f['dropped_blurred']} slices dropped as blurred, "
                  f"{f['dropped_still']} as still")  # fmt: skip
        print(f"demo: SfM registered {sfm['registered']}/{sfm['total']} photos, {sfm['points']} points")
        print(f"demo: trained {t['steps']} steps on {t['backend']}: {t['gaussians']} Gaussians")
        print(f"demo: held-out PSNR {m['initial_psnr']:.2f} dB before training, {m['psnr']:.2f} dB after "
              f"(SSIM {m['ssim']:.3f}, {m['views']} views)")  # fmt: skip
        stages = ("download", "images", "frames", "sfm", "train", "evaluate", "export")
        timings = result["timings_s"]
        per_stage = ", ".join(f"{k} {timings[k]:.1f}" for k in stages if k in timings)
        print(f"demo: seconds per stage: {per_stage}")
    if "lods" in result:
        report_mesh(result)
    if result.get("kind") == "pointcloud":
        report_pointcloud(result)
    print(f"demo: outputs in {shown(out)}/:")
    for path in sorted(out.iterdir()):
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            print(f"  {path.name + '/':24} {size:>10,} bytes in {len(files)} files")
        else:
            print(f"  {path.name:24} {path.stat().st_size:>10,} bytes")
    return 0


def report_mesh(result: dict) -> None:
    analysis, optimized = result["analysis"], result["optimized"]
    textures = [f"{t['width']}×{t['height']} {t['mime_type']}" for t in analysis["textures"]]
    print(f"demo: read {result['source']['format']}: {analysis['triangles']:,} triangles, "
          f"{analysis['primitives']} primitives, {analysis['materials']} materials, "
          f"textures: {', '.join(textures) or 'none'}")  # fmt: skip
    report = analysis["validator"]
    print(f"demo: watertight {analysis['watertight']}, validator: {report['errors']} errors, "
          f"{report['warnings']} warnings")  # fmt: skip
    print(f"demo: model.glb: {optimized['triangles']:,} triangles, {optimized['bytes']:,} bytes "
          f"({optimized['compression']})")  # fmt: skip
    for level in result["lods"]["levels"]:
        error = f"{100 * level['hausdorff']:.3f}% (Hausdorff) {100 * level['chamfer']:.4f}% (chamfer)"
        print(f"demo:   {level['name']:16} {level['triangles']:>9,} triangles {level['bytes']:>10,} bytes, "
              f"error {error}")  # fmt: skip
    timings = result["timings_s"]
    print("demo: seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def report_pointcloud(result: dict) -> None:
    analysis, clean, outputs = result["analysis"], result["clean"], result["outputs"]
    srs, density = analysis["srs"] or {}, analysis["density"]
    print(
        f"demo: read {analysis['format']} (LAS {analysis['las_version']}, point format "
        f"{analysis['point_format']}): {analysis['points']:,} points, EPSG:{srs.get('epsg')}, "
        f"{density['density_per_m2']:.1f} points/m², spacing {density['spacing_m']:.2f} m"
    )
    print(f"demo: noise: {clean['low_noise']:,} low (7), {clean['high_noise']:,} high (18); "
          f"{clean['tiles']} tile(s), halo {clean['halo_m']:.1f} m")  # fmt: skip
    classes = result["classify"]["classification"]
    print(f"demo: ground (2): {classes.get('2', 0):,} points by {result['classify']['ground']}")
    copc = outputs["copc"]
    print(f"demo: cloud.copc.laz: {copc['points']:,} points in {copc['nodes']} nodes, depths "
          f"{', '.join(copc['nodes_per_depth'])}")  # fmt: skip
    if "tiles" in outputs:
        print(f"demo: tiles/: {outputs['tiles']['files']} files, placed on the globe: "
              f"{outputs['tiles']['placed_on_globe']}")  # fmt: skip
    timings = result["timings_s"]
    print("demo: seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


if __name__ == "__main__":
    sys.exit(main())

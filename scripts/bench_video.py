#!/usr/bin/env python3
"""Video frame extraction benchmark: decode + sharp-frame selection throughput, three ways.

The clip: a textured pattern panning along a smooth curve (H.264, libx264 veryfast, CRF 23, yuv420p),
30 s at 30 fps and 1080p by default, made once with PyAV and cached in `--cache` (the generation time is
printed on its own line and is not part of any row). Every method samples 2 frames per second.

- "ours (PyAV)": `extract_frames` in-process: decode, Laplacian sharpness per frame at the analysis
  size, best frame per bucket converted to RGB and written as JPEG, blur and duplicate filtering.
- "PyAV decode only": the same decoder settings with nothing else, the floor for the row above.
- "ffmpeg pipe + select": the same selection done around ffmpeg subprocesses: one ffmpeg decodes and
  scales to the analysis size and pipes grey frames to Python, which keeps the sharpest frame per
  bucket (same `laplacian_variance`); a second ffmpeg call decodes again and writes the chosen frames
  at full size as JPEG.
- "ffmpeg fps=2": what the replaced worker ran, `ffmpeg -i in.mp4 -vf fps=2 out%04d.jpg`: no sharpness
  selection at all (the frame nearest each 1/2 s tick, blurred or not).

Each method runs in a child process of its own. Peak RSS is each process's own high-water mark
(VmHWM from /proc: `ru_maxrss` would not do, a spawned process inherits its parent's across fork and
exec), shown as Python + the largest ffmpeg subprocess; the old worker's row counts ffmpeg only, as it
ran nothing else. frames/s is decoded frames (every method decodes the whole clip; the pipe method
decodes it twice but counts it once) over wall seconds. Timings are wall clock on a shared machine:
compare ratios within one run.

    .venv/bin/python scripts/bench_video.py                          # 1080p, 30 s: ~1 min + generation
    .venv/bin/python scripts/bench_video.py --seconds 5 --height 360  # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from daemon.handlers.splat.video import (  # noqa: E402
    ANALYSIS_LONG_SIDE,
    BLUR_FRACTION,
    FrameOptions,
    extract_frames,
    laplacian_variance,
)

SAMPLE_FPS = 2.0
MAX_IMAGE_SIZE = 1600
METHODS = ("ours", "decode", "pipe", "fps")
LABELS = {
    "ours": "ours (PyAV)",
    "decode": "PyAV decode only",
    "pipe": "ffmpeg pipe + select",
    "fps": "ffmpeg fps=2 (old worker)",
}


# -- the clip ---------------------------------------------------------------------------------------


def clip_path(cache: Path, seconds: float, height: int, fps: int) -> Path:
    width = round(height * 16 / 9 / 2) * 2
    return cache / f"pan-v2_{width}x{height}_{fps}fps_{seconds:g}s.mp4"  # v2: finest octave added


def make_clip(path: Path, seconds: float, height: int, fps: int) -> float:
    """Write the panning clip; return the seconds it took."""
    started = time.monotonic()
    width = round(height * 16 / 9 / 2) * 2
    rng = np.random.default_rng(0)
    pad = height // 2
    texture = np.zeros((height + 2 * pad, width + 2 * pad, 3), np.float32)
    # Octaves from the whole frame down to 2-3 px grain, so the clip compresses like real footage.
    for cells, weight in ((6, 90.0), (24, 60.0), (96, 40.0), (384, 30.0), (1152, 25.0)):
        grid = (rng.random((cells * 9 // 16 + 1, cells, 3)) * 255).astype(np.uint8)
        texture += (
            weight
            / 255
            * np.asarray(
                Image.fromarray(grid).resize(texture.shape[1::-1], Image.Resampling.BICUBIC), np.float32
            )
        )
    texture = np.clip(texture, 0, 255).astype(np.uint8)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    frames = round(seconds * fps)
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for index in range(frames):
            phase = 2 * np.pi * index / frames
            x = int(pad + pad * 0.9 * np.sin(phase))
            y = int(pad + pad * 0.9 * np.sin(2 * phase))
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(texture[y : y + height, x : x + width]), format="rgb24"
            )
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    os.replace(tmp, path)
    return time.monotonic() - started


# -- measuring memory -------------------------------------------------------------------------------


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident memory of a live process (VmHWM), in MB; 0.0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Watched:
    """Poll a subprocess's VmHWM every 20 ms while it runs (the last reading is its peak, give or take
    the last 20 ms)."""

    peak_mb = 0.0

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while self.process.poll() is None:
            Watched.peak_mb = max(Watched.peak_mb, vm_hwm_mb(self.process.pid))
            time.sleep(0.02)

    def wait(self) -> int:
        code = self.process.wait()
        self.thread.join()
        return code


def ffmpeg(args: list[str], **kwargs: Any) -> Watched:
    return Watched(subprocess.Popen(["ffmpeg", "-v", "error", *args], **kwargs))


# -- the methods (each runs in a child process) ----------------------------------------------------


def run_ours(clip: Path, out: Path) -> dict[str, Any]:
    result = extract_frames(
        clip, out, FrameOptions(fps=SAMPLE_FPS, max_image_size=MAX_IMAGE_SIZE, min_frames=1)
    )
    return {"decoded": result.video.frames_decoded, "chosen": len(result.paths)}


def run_decode(clip: Path, out: Path) -> dict[str, Any]:
    decoded = 0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        for _ in container.decode(stream):
            decoded += 1
    return {"decoded": decoded, "chosen": 0}


def run_pipe(clip: Path, out: Path) -> dict[str, Any]:
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = float(stream.average_rate or 30)
    scale = min(1.0, ANALYSIS_LONG_SIDE / max(width, height))
    aw, ah = round(width * scale), round(height * scale)
    decoder = ffmpeg(
        ["-i", str(clip), "-vf", f"scale={aw}:{ah}:flags=area", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        stdout=subprocess.PIPE,
    )
    pipe = decoder.process.stdout
    assert pipe is not None
    best: dict[int, tuple[float, int]] = {}
    decoded = 0
    size = aw * ah
    while True:
        data = pipe.read(size)
        if len(data) < size:
            break
        score = laplacian_variance(np.frombuffer(data, np.uint8).reshape(ah, aw))
        bucket = int(decoded / rate * SAMPLE_FPS + 1e-6)
        if bucket not in best or score > best[bucket][0]:
            best[bucket] = (score, decoded)
        decoded += 1
    if decoder.wait() != 0:
        raise RuntimeError("ffmpeg decode failed")
    median = float(np.median([score for score, _ in best.values()]))
    chosen = sorted(n for score, n in best.values() if score >= BLUR_FRACTION * median)
    select = "+".join(f"eq(n\\,{n})" for n in chosen)
    long_side = f"min({MAX_IMAGE_SIZE}\\,iw)" if width >= height else "-2"
    short_side = "-2" if width >= height else f"min({MAX_IMAGE_SIZE}\\,ih)"
    out.mkdir(parents=True, exist_ok=True)
    extract = ["-i", str(clip), "-vf", f"select='{select}',scale={long_side}:{short_side}"]
    if ffmpeg(extract + ["-vsync", "0", "-q:v", "2", str(out / "%04d.jpg")]).wait() != 0:
        raise RuntimeError("ffmpeg extract failed")
    return {"decoded": decoded, "chosen": len(list(out.glob("*.jpg")))}


def run_fps(clip: Path, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    if ffmpeg(["-i", str(clip), "-vf", f"fps={SAMPLE_FPS:g}", str(out / "out%04d.jpg")]).wait() != 0:
        raise RuntimeError("ffmpeg failed")
    with av.open(str(clip)) as container:
        decoded = container.streams.video[0].frames
    return {"decoded": decoded, "chosen": len(list(out.glob("*.jpg")))}


def child(method: str, clip: Path) -> None:
    """Run one method and print its numbers as one JSON line."""
    runner = {"ours": run_ours, "decode": run_decode, "pipe": run_pipe, "fps": run_fps}[method]
    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        started = time.monotonic()
        numbers = runner(clip, Path(tmp) / "frames")
        numbers["wall_s"] = time.monotonic() - started
    numbers["rss_python_mb"] = 0.0 if method == "fps" else vm_hwm_mb()
    numbers["rss_ffmpeg_mb"] = Watched.peak_mb
    print(json.dumps(numbers))


# -- the table --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length (default 30)")
    parser.add_argument("--height", type=int, default=1080, help="clip height, 16:9 (default 1080)")
    parser.add_argument("--fps", type=int, default=30, help="clip frame rate (default 30)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_video")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated of {','.join(METHODS)}"
    )
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.clip)
        return
    if shutil.which("ffmpeg") is None:
        sys.exit("the ffmpeg CLI is needed for the comparison rows")

    args.cache.mkdir(parents=True, exist_ok=True)
    clip = clip_path(args.cache, args.seconds, args.height, args.fps)
    if clip.exists():
        print(f"clip: {clip} (cached)")
    else:
        took = make_clip(clip, args.seconds, args.height, args.fps)
        print(f"clip: {clip} generated in {took:.1f} s ({clip.stat().st_size / 1e6:.1f} MB)")
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        print(
            f"      {stream.codec_context.width}x{stream.codec_context.height}, {stream.frames} frames, "
            f"{float(stream.average_rate or 0):g} fps, sampled at {SAMPLE_FPS:g}/s; "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
        )

    rows = []
    for method in args.methods.split(","):
        done = subprocess.run(
            [sys.executable, __file__, "--child", method, "--clip", str(clip)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            sys.exit(f"{method} failed:\n{done.stderr[-3000:]}")
        numbers = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append((LABELS[method], numbers))

    print(f"\n{'method':<27} {'wall s':>7} {'frames/s':>9} {'chosen':>7}  {'peak RSS MB (py + ffmpeg)':>26}")
    for label, n in rows:
        py, ff = n["rss_python_mb"], n["rss_ffmpeg_mb"]
        rss = f"{py + ff:.0f} ({py:.0f} + {ff:.0f})"
        rate = n["decoded"] / n["wall_s"]
        print(f"{label:<27} {n['wall_s']:>7.2f} {rate:>9.0f} {n['chosen']:>7}  {rss:>26}")


if __name__ == "__main__":
    main()

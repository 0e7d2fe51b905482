"""Which photos share a camera (one set of intrinsics) in structure from motion.

Photos from one device share their intrinsics, and solving one set for many photos is both faster and
more accurate than one set per photo: on 50 phone photos without EXIF, COLMAP's AUTO mode gave every
photo its own camera and mapping took 40.5 s against 27.3 s with one shared camera, with a worse median
rotation error (issue 14). So, by default ("auto"), photos are grouped into cameras by what the device
wrote (EXIF make, model and focal length, read by the images stage before it drops the metadata) and by
their size as they reach SfM; photos with no EXIF fall into one camera per size. "single" puts every
photo of a size in one camera whatever its EXIF says (video frames; photos of two sizes cannot share
intrinsics in pixels, and COLMAP gives a photo whose size differs from its camera's a camera of its
own), "per_image" one camera per photo (photos from many devices, or cropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

CameraGrouping = Literal["auto", "single", "per_image"]
CAMERA_GROUPINGS: tuple[CameraGrouping, ...] = get_args(CameraGrouping)


def camera_groups(
    names: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    devices: Sequence[str | None],
    grouping: CameraGrouping,
) -> list[list[str]]:
    """`names` split into cameras, each a list in input order, cameras in order of first appearance.
    `devices[i]` is image i's device key (EXIF make/model/focal) or None when it had none."""
    if grouping == "per_image":
        return [[name] for name in names]
    groups: dict[str, list[str]] = {}
    for name, (width, height), device in zip(names, sizes, devices, strict=True):
        # The size is part of every key: a portrait and a landscape photo of one phone are two cameras
        # to a pinhole model, and a photo resized differently has other intrinsics in pixels.
        device = device if grouping == "auto" else None
        groups.setdefault(f"{device or 'any device'} @ {width}x{height}", []).append(name)
    return list(groups.values())


def size_only(
    groups: Sequence[Sequence[str]], devices_of: dict[str, str | None], grouping: CameraGrouping
) -> set[str]:
    """The photos that share a camera by their size alone (auto grouping, no device known, two or
    more in the group): the ones sfm_camera_check.py checks after mapping."""
    if grouping != "auto":
        return set()
    return {
        name
        for group in groups
        if len(group) > 1 and all(devices_of[n] is None for n in group)
        for name in group
    }


def image_sizes(folder: Path, names: Sequence[str]) -> list[tuple[int, int]]:
    """(width, height) of each image, from its header only."""
    from PIL import Image  # (this module's names are also read by the params, in the worker parent)

    sizes = []
    for name in names:
        with Image.open(folder / name) as image:
            sizes.append(image.size)
    return sizes


def import_cameras(pycolmap: Any, database: Path, images: Path, groups: list[list[str]]) -> None:
    """Register the images in the database, one camera per group: each group is imported on its own
    in SINGLE mode, which gives its images one new camera (extraction keeps them)."""
    if all(len(group) == 1 for group in groups) and len(groups) > 1:
        names = [group[0] for group in groups]
        pycolmap.import_images(database, images, pycolmap.CameraMode.PER_IMAGE, names)
        return
    for group in groups:
        pycolmap.import_images(database, images, pycolmap.CameraMode.SINGLE, group)

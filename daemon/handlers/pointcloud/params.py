"""Parameters of the "pointcloud" job kind: a laser scan or photogrammetry cloud → cleaned, classified,
COPC and 3D Tiles. Pydantic only, like every kind's params. Names follow PDAL's filters (outlier, elm)
and CSF's own, so a surveyor who knows those tools reads them as they are."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from ..base import STRICT_PARAMS

Output = Literal["copc", "tiles", "preview", "ept"]
DEFAULT_OUTPUTS: tuple[Output, ...] = ("copc", "tiles", "preview")


class OutlierParams(BaseModel):
    """Statistical outlier removal, as PDAL's filters.outlier (method "statistical"): a point whose mean
    distance to its `mean_k` nearest neighbours exceeds the cloud's mean of those distances by more
    than `multiplier` standard deviations is noise."""

    model_config = STRICT_PARAMS

    mean_k: int = Field(default=8, ge=2, le=64)
    """Neighbours whose mean distance is measured (PDAL's default 8)."""

    multiplier: float = Field(default=2.0, gt=0, le=100)
    """Standard deviations above the mean distance that make a point noise (PDAL's default 2.0)."""


class ElmParams(BaseModel):
    """The extended local minimum, as PDAL's filters.elm: in each `cell` × `cell` column the lowest point
    is low noise when the next lowest is more than `threshold` above it; the column is followed upwards
    until a point is not."""

    model_config = STRICT_PARAMS

    cell: float = Field(default=10.0, gt=0, le=1000)
    """Column size in metres (PDAL's default 10)."""

    threshold: float = Field(default=1.0, gt=0, le=1000)
    """Height in metres between the lowest points of a column that marks the lower as noise (PDAL's 1)."""


class CsfParams(BaseModel):
    """Ground by the cloth simulation filter (Zhang et al. 2016; the `cloth-simulation-filter`
    package), its parameters under CSF's own names."""

    model_config = STRICT_PARAMS

    cloth_resolution: float = Field(default=1.0, gt=0, le=100)
    """Grid size of the cloth in metres: about the spacing of ground points to keep."""

    rigidness: Literal[1, 2, 3] = 2
    """1 steep slopes and mountains, 2 terrain with gentle slopes, 3 flat (urban) terrain."""

    class_threshold: float = Field(default=0.5, gt=0, le=100)
    """Distance in metres from the settled cloth within which a point is ground."""

    time_step: float = Field(default=0.65, gt=0, le=10)
    """The simulation's time step (CSF's default)."""

    iterations: int = Field(default=500, ge=10, le=5000)
    """The simulation's iterations at most (CSF's default 500)."""

    slope_smooth: bool = True
    """Post-process steep slopes (CSF's bSloopSmooth)."""


class PointcloudParams(BaseModel):
    """How a point cloud is cleaned, classified and tiled. Every field is optional."""

    model_config = STRICT_PARAMS

    outlier: OutlierParams | None = Field(default_factory=OutlierParams)
    """Statistical outlier removal; null: none."""

    elm: ElmParams | None = Field(default_factory=ElmParams)
    """Low-noise removal below the ground; null: none."""

    drop_noise: bool = False
    """Noise found is classified (7 low noise, 18 high noise) and kept; true: left out of the outputs."""

    ground: Literal["csf", "none"] = "csf"
    """Ground classification (class 2) by the cloth simulation filter, or none."""

    csf: CsfParams = Field(default_factory=CsfParams)
    """The cloth simulation's parameters (with ground "csf")."""

    srs_in: int | None = Field(default=None, ge=1024, le=999_999)
    """EPSG code of the input's coordinates when its file does not say (or says wrongly)."""

    srs_out: int | None = Field(default=None, ge=1024, le=999_999)
    """EPSG code to reproject the outputs into; null: the input's own."""

    max_points: int = Field(default=2_000_000_000, ge=1)
    """A cloud whose header declares more points than this is refused before it is read."""

    outputs: list[Output] = Field(default_factory=lambda: list(DEFAULT_OUTPUTS))
    """What to make: "copc" (cloud.copc.laz), "tiles" (3D Tiles under tiles/), "preview" (preview.png);
    "ept" (Entwine Point Tiles) is refused: no library here writes it, and COPC is its successor."""

    preview_size: int = Field(default=1024, ge=64, le=4096)
    """Long side of preview.png (pixels)."""

    @field_validator("srs_in", "srs_out")
    @classmethod
    def _known_epsg(cls, code: int | None) -> int | None:
        if code is not None and not _epsg_known(code):
            raise ValueError(f"EPSG:{code} is not a coordinate system PROJ knows")
        return code

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, outputs: list[str]) -> list[str]:
        if "ept" in outputs:
            raise ValueError('"ept": no library installable here writes Entwine Point Tiles; ask for "copc"')
        if not outputs:
            raise ValueError("at least one output")
        return sorted(set(outputs), key=outputs.index)


def _epsg_known(code: int) -> bool:
    """Whether PROJ's database has EPSG:`code` (pyproj imported here only: the parent validates specs
    and pyproj is a light import)."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        CRS.from_epsg(code)
    except CRSError:
        return False
    return True

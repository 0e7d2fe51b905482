"""Exporting: the standard PLY reads back with the layout viewers expect, non-finite rows are dropped
(where gsplat 1.5.3 would write an empty model), compressed variants are written."""

from __future__ import annotations

import torch

from daemon.handlers.splat.export import ply_property_names, read_ply, write_compressed, write_ply


def random_params(n: int = 50, sh_rest: int = 15) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 3,
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, sh_rest, 3, generator=g) * 0.1,
    }


def test_standard_ply_has_the_3dgs_layout_and_values(tmp_path):
    # Given a model with SH degree 3 (15 higher coefficients per channel)
    params = random_params()
    # When it is written and read back
    count = write_ply(tmp_path / "splat.ply", params)
    names, data = read_ply(tmp_path / "splat.ply")
    # Then the properties are the standard ones, in order, and the values round-trip
    assert count == 50 and data.shape == (50, 62)
    assert names == ply_property_names(15)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert torch.allclose(torch.from_numpy(data[:, :3].copy()), params["means"])
    # f_rest is channel-major: the first 15 are red's bands
    assert torch.allclose(torch.from_numpy(data[:, 9:24].copy()), params["shN"][:, :, 0])
    assert torch.allclose(torch.from_numpy(data[:, 54].copy()), params["opacities"])


def test_non_finite_rows_are_dropped_not_the_whole_model(tmp_path):
    # Given one Gaussian with a NaN opacity and another with an infinite scale
    params = random_params()
    params["opacities"][3] = float("nan")
    params["scales"][7, 1] = float("inf")
    # When exported in every format
    assert write_ply(tmp_path / "a.ply", params) == 48
    write_compressed(tmp_path / "a.compressed.ply", params, "ply_compressed")
    write_compressed(tmp_path / "a.splat", params, "splat")
    # Then the PLY keeps the 48 finite ones and the compressed files are not empty
    assert len(read_ply(tmp_path / "a.ply")[1]) == 48
    assert (tmp_path / "a.splat").stat().st_size == 48 * 32  # .splat: 32 bytes per Gaussian
    assert (tmp_path / "a.compressed.ply").stat().st_size > 0


def test_gsplat_1_5_3_alone_would_export_an_empty_model(tmp_path):
    # Why the filter exists (DESIGN §7): gsplat reduces the opacity check over the wrong axis
    from gsplat import export_splats

    params = random_params()
    params["opacities"][3] = float("nan")
    data = export_splats(**params, format="ply")
    assert b"element vertex 0\n" in data

"""The segmentation networks: any input size in, same size out; save/load round trip."""

from __future__ import annotations

import pytest
import torch

from nanoseg import nets


@pytest.mark.parametrize("name", ["unet", "multiresunet"])
@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 1, 64, 48), (1, 1, 5, 7)])
def test_any_size_maps_to_same_size(name, shape):
    torch.manual_seed(0)
    net = nets.create(name, in_channels=1, out_channels=3, base_width=4, depth=3).eval()
    with torch.no_grad():
        out = net(torch.rand(shape))
    assert out.shape == (shape[0], 3, shape[2], shape[3])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["unet", "multiresunet"])
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(0)
    net = nets.create(name, in_channels=1, out_channels=1, base_width=4, depth=2).eval()
    x = torch.rand(1, 1, 40, 36)
    with torch.no_grad():
        ref = net(x)
        out = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_multiresunet_block_widths_follow_alpha():
    from nanoseg.nets.multiresunet import multires_widths

    # Paper: U=32 -> W=53.44 -> 8 + 17 + 26 = 51 filters.
    assert multires_widths(32) == (8, 17, 26)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = nets.create("multiresunet", in_channels=1, out_channels=2, base_width=4, depth=2).eval()
    path = nets.save(net, tmp_path / "m.pt", meta={"pixel_size_nm": 7.3}, kind="segmenter")
    loaded, meta = nets.load(path)
    x = torch.rand(1, 1, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert meta["pixel_size_nm"] == 7.3
    assert nets.load_meta(path) == meta  # without building the net

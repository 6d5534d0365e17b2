"""The gather-based modulated deformable convolution equals torchvision's (the reference), forward and backward."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from odinw_bench.models.glip.deform_sampling import deform_conv2d_sampled
from odinw_bench.models.glip.dyconv import (
    DyConv,
    ModulatedDeformConv3x3,
    set_deform_implementation,
)

# (batch, in, out, height, width, stride): odd sizes, a 1x2 map (GLIP's P7 on small images), stride 2.
SHAPES = [(2, 5, 7, 9, 11, 1), (2, 5, 7, 9, 11, 2), (1, 3, 4, 1, 2, 1), (3, 8, 6, 4, 3, 2)]


def _inputs(batch, c_in, c_out, height, width, stride, dtype, offset_scale=3.0):
    generator = torch.Generator().manual_seed(height * 100 + width * 10 + stride)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=dtype) * scale).requires_grad_()

    mask = torch.rand(batch, 9, out_h, out_w, generator=generator, dtype=dtype).requires_grad_()
    # Offsets up to several pixels: many samples fall partly or wholly outside the map (the zero-read rule).
    return (rand(batch, c_in, height, width), rand(batch, 18, out_h, out_w, scale=offset_scale),
            rand(c_out, c_in, 3, 3), rand(c_out), mask)


@pytest.mark.parametrize("shape", SHAPES)
def test_sampled_deform_conv_equals_torchvision_forward_and_every_gradient_in_float64(shape):
    x, offset, weight, bias, mask = _inputs(*shape, dtype=torch.float64)
    stride = shape[-1]
    reference = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    ours = deform_conv2d_sampled(x, offset, weight, bias, stride, mask)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    upstream = torch.randn_like(reference)
    ref_grads = torch.autograd.grad(reference, (x, offset, mask, weight, bias), upstream)
    our_grads = torch.autograd.grad(ours, (x, offset, mask, weight, bias), upstream)
    for name, ref, got in zip(("x", "offset", "mask", "weight", "bias"), ref_grads, our_grads):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-11, msg=f"gradient of {name}")


def test_sampled_deform_conv_matches_torchvision_in_float32_at_glip_sizes():
    x, offset, weight, bias, mask = _inputs(2, 32, 32, 20, 25, 1, dtype=torch.float32, offset_scale=1.5)
    with torch.no_grad():
        reference = deform_conv2d(x, offset, weight, bias, stride=1, padding=1, mask=mask)
        ours = deform_conv2d_sampled(x, offset, weight, bias, 1, mask)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_integer_offsets_that_land_exactly_on_pixels_and_borders_read_like_torchvision():
    x, _, weight, bias, _ = _inputs(1, 3, 2, 5, 6, 1, dtype=torch.float64)
    offset = torch.randint(-6, 7, (1, 18, 5, 6)).double()  # whole pixels, many exactly on or past the border
    offset = torch.cat([offset[:, :9], torch.zeros(1, 9, 5, 6, dtype=torch.float64)], 1).requires_grad_()
    mask = torch.rand(1, 9, 5, 6, dtype=torch.float64, requires_grad=True)
    reference = deform_conv2d(x, offset, weight, bias, stride=1, padding=1, mask=mask)
    ours = deform_conv2d_sampled(x, offset, weight, bias, 1, mask)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    # Zero offsets (a fresh offset conv) put padding taps exactly one pixel outside: torchvision's gradient is 0.
    upstream = torch.randn_like(reference)
    for ref, got in zip(torch.autograd.grad(reference, (x, offset, mask, weight), upstream),
                        torch.autograd.grad(ours, (x, offset, mask, weight), upstream)):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-11)


def test_a_dyhead_block_gives_the_same_output_and_weight_gradients_with_either_implementation():
    torch.manual_seed(0)
    block = DyConv(16, 16).train()
    # Random parameters everywhere: at GLIP's init (one channel per GroupNorm group, zero biases) the attention's
    # ReLU input is rounding noise around 0, and which side of the kink it falls on is not a kernel property.
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    features = [torch.randn(2, 16, 12 // 2**i + 1, 14 // 2**i + 1) for i in range(4)]
    results = {}
    for implementation in ("torchvision", "sampled"):
        assert set_deform_implementation(block, implementation) == 3
        block.zero_grad()
        out = block.forward_levels(features)
        sum((level * (i + 1)).sum() for i, level in enumerate(out)).backward()
        results[implementation] = ([o.detach() for o in out], [p.grad.clone() for p in block.parameters()])
    for ref, got in zip(results["torchvision"][0], results["sampled"][0]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for ref, got in zip(results["torchvision"][1], results["sampled"][1]):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_the_default_is_the_fast_path_and_an_unknown_implementation_is_refused():
    conv = ModulatedDeformConv3x3(2, 2)
    assert conv.implementation == "sampled"
    assert "implementation" not in str(conv.state_dict().keys())  # a kernel choice, not a weight
    with pytest.raises(ValueError, match="torchvision"):
        set_deform_implementation(conv, "cuda-kernel")


@pytest.mark.parametrize("shape", [*SHAPES, (1, 3, 2, 1, 2, 1), (2, 4, 3, 1, 1, 1)])
def test_grid_sample_path_equals_torchvision_in_float64_with_one_pixel_maps(shape):
    x, offset, weight, bias, mask = _inputs(*shape, dtype=torch.float64)
    with torch.no_grad():
        reference = deform_conv2d(x, offset, weight, bias, stride=shape[-1], padding=1, mask=mask)
        torch.testing.assert_close(deform_conv2d_sampled(x, offset, weight, bias, shape[-1], mask, sampler="grid"),
                                   reference,
                                   rtol=0, atol=1e-12)


def test_grid_sample_path_reads_integer_offsets_and_borders_like_torchvision():
    x, _, weight, bias, _ = _inputs(1, 3, 2, 5, 6, 1, dtype=torch.float64)
    offset = torch.randint(-6, 7, (1, 18, 5, 6)).double()
    mask = torch.rand(1, 9, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        reference = deform_conv2d(x, offset, weight, bias, stride=1, padding=1, mask=mask)
        torch.testing.assert_close(deform_conv2d_sampled(x, offset, weight, bias, 1, mask, sampler="grid"),
                                   reference,
                                   rtol=0, atol=1e-12)


def test_the_module_uses_grid_sample_without_autograd_and_gathers_with_it(monkeypatch):
    from odinw_bench.models.glip import deform_sampling, dyconv

    used = []
    real = deform_sampling.deform_conv2d_sampled
    monkeypatch.setattr(dyconv, "deform_conv2d_sampled", lambda *a, **k: used.append(k["sampler"]) or real(*a, **k))
    conv = ModulatedDeformConv3x3(3, 4)
    x, offset, _, _, mask = _inputs(1, 3, 4, 5, 6, 1, dtype=torch.float32)
    conv(x, offset, mask)
    with torch.no_grad():
        plain = conv(x, offset, mask)
    assert used == ["gather", "grid"]
    torch.testing.assert_close(plain, conv(x, offset, mask).detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="sampler"):
        deform_conv2d_sampled(x, offset, conv.weight, None, 1, mask, sampler="nearest")

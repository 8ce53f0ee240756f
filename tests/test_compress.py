"""Magnitude pruning (dynvit.compress): unstructured masks through fine-tuning, the cubic schedule,
structured removal of heads / MLP units / block channels, and saving pruned models."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, ResNet

import dynvit
from dynvit.compress import (
    IterativePruner,
    apply_structure,
    basic_blocks,
    cubic_sparsity,
    magnitude_prune,
    masked_layers,
    prunable_layers,
    prune_attention_heads,
    prune_block_channels,
    prune_mlp_units,
    pruned_structure,
    remove_masks,
    sparsity,
)
from dynvit.runtime import count_flops, profile

from helpers import images, randomize_batch_norms, training_loss
from numerics import assert_rounding_close

MODELS = ['test_dynamicvit', 'test_evovit', 'test_fbs_resnet']


def _model(name, **kwargs):
    return randomize_batch_norms(dynvit.create_model(name, **kwargs)).eval()


def _effective(layer):
    return layer.weight_orig * layer.weight_mask if hasattr(layer, 'weight_mask') else layer.weight


def _finetune(model, x, steps=3):
    """A few AdamW steps on the family's training loss; leaves the model in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    target = torch.arange(x.shape[0]) % model.num_classes
    model.train()
    for _ in range(steps):
        logits, aux = model(x, return_aux=True)
        loss = training_loss(model, logits, aux, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# ---- which layers ----

def test_default_layers_skip_predictors_gates_embedding_and_classifier():
    vit = dynvit.create_model('test_dynamicvit')
    names = list(prunable_layers(vit))
    assert names and all(n.startswith('blocks.') for n in names)
    assert len(names) == 4 * len(vit.blocks)  # qkv, proj, fc1, fc2
    more = prunable_layers(vit, include=('default', 'head', 'embed', 'predictor'))
    assert {'head', 'patch_embed.proj', 'score_predictor.0.out_conv.0'} <= set(more)
    assert list(prunable_layers(vit, include='*.mlp.*')) == [n for n in names if '.mlp.' in n]
    assert list(prunable_layers(vit, exclude='blocks.0')) == [n for n in names if not n.startswith('blocks.0.')]

    evo = dynvit.create_model('test_evovit')
    assert all(n.startswith('blocks.') for n in prunable_layers(evo))
    assert {'head', 'head_cls'} <= set(prunable_layers(evo, include='head'))

    cnn = dynvit.create_model('test_fbs_resnet')
    names = list(prunable_layers(cnn))
    assert 'conv1' in names and 'layer1.0.conv2' in names
    assert not any('gate' in n for n in names) and 'fc' not in names
    assert set(prunable_layers(cnn, include='gate')) == {f'layer{i}.0.gate{j}.fc' for i in range(1, 5) for j in (1, 2)}


# ---- unstructured ----

@pytest.mark.parametrize('name', MODELS + ['test_fbs_efficientnet'])
def test_pruned_weights_stay_zero_through_finetuning(name):
    model = _model(name)
    x = images(4)
    with torch.no_grad():
        model(x)  # FBS inference caches its folded weights: pruning must invalidate them
    layers = magnitude_prune(model, 0.6)
    masks = {n: m.weight_mask.clone() for n, m in layers.items()}
    before = {n: m.weight_orig.detach().clone() for n, m in layers.items()}
    assert sparsity(model).overall == pytest.approx(0.6, abs=1e-3)

    _finetune(model, x)
    for n, m in layers.items():
        assert torch.equal(m.weight_mask, masks[n])
        assert (_effective(m)[masks[n] == 0] == 0).all(), n
        kept = masks[n] == 1
        assert not torch.equal(m.weight_orig.detach()[kept], before[n][kept]), n  # the rest was trained
    assert sparsity(model).overall == pytest.approx(0.6, abs=1e-3)

    # inference (FBS: sliced and folded weights, no conv module called) uses the fine-tuned weights
    with torch.no_grad():
        out = model(x)
    state = model.state_dict()
    rebuilt = dynvit.create_model(name).eval()
    rebuilt.load_state_dict({k[:-len('_orig')] if k.endswith('_orig') else k:
                             v * state[k[:-len('_orig')] + '_mask'] if k.endswith('_orig') else v
                             for k, v in state.items() if not k.endswith('_mask')})
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out)  # the same weights (mask applied = baked in), the same kernels

    model.train()
    model(x)  # a training forward: masked weights get autograd history, and lose it after the pass
    permanent = remove_masks(copy.deepcopy(model)).eval()
    assert masked_layers(model) and not masked_layers(permanent)
    assert not any(k.endswith(('_orig', '_mask')) for k in permanent.state_dict())
    with torch.no_grad():
        assert torch.equal(permanent(x), model.eval()(x))
    for n, m in permanent.named_modules():
        if n in layers:
            assert isinstance(m.weight, nn.Parameter) and (m.weight[masks[n] == 0] == 0).all()
    assert sparsity(permanent).overall == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize('name', MODELS)
def test_global_and_layer_amounts(name):
    model = _model(name)
    magnitude_prune(model, 0.5, scope='layer')
    stats = sparsity(model)
    for n, (zeros, total) in stats.counts.items():
        assert zeros == round(0.5 * total), n

    model = _model(name)
    first = next(iter(prunable_layers(model)))
    with torch.no_grad():
        model.get_submodule(first).weight.mul_(10.0)  # a layer of larger weights
    layers = magnitude_prune(model, 0.5, scope='global')
    total = sum(m.weight_orig.numel() for m in layers.values())
    assert sparsity(model).zeros == round(0.5 * total)
    fractions = sparsity(model).layers
    assert fractions[first] < 0.25 and max(fractions.values()) > 0.5  # one threshold: layers differ
    # every surviving weight is at least as large as every pruned one
    pruned = torch.cat([m.weight_orig[m.weight_mask == 0].abs().flatten() for m in layers.values()])
    kept = torch.cat([m.weight_orig[m.weight_mask == 1].abs().flatten() for m in layers.values()])
    assert pruned.max() <= kept.min()

    # a larger amount keeps the earlier pruning and adds to it; a smaller one changes nothing
    old = {n: m.weight_mask.clone() for n, m in layers.items()}
    magnitude_prune(model, 0.7, scope='global')
    assert sparsity(model).zeros == round(0.7 * total)
    assert all((layers[n].weight_mask <= old[n]).all() for n in old)
    magnitude_prune(model, 0.3, scope='global')
    assert sparsity(model).zeros == round(0.7 * total)

    with pytest.raises(ValueError, match='amount'):
        magnitude_prune(model, 1.0)
    with pytest.raises(ValueError, match='scope'):
        magnitude_prune(model, 0.5, scope='model')
    with pytest.raises(ValueError, match='no nn.Linear'):
        magnitude_prune(model, 0.5, include='nothing.here')


def test_dense_timm_models():
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, depth=2, num_classes=10).eval()
    cnn = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8, num_classes=10).eval()
    for model in (vit, cnn):
        x = images(2)
        magnitude_prune(model, 0.5, scope='layer')
        assert 'head' not in sparsity(model).counts and 'fc' not in sparsity(model).counts
        assert sparsity(model).overall == pytest.approx(0.5, abs=1e-3)
        with torch.no_grad():
            out = model(x)
        remove_masks(model)
        with torch.no_grad():
            torch.testing.assert_close(model(x), out, rtol=0, atol=0)


# ---- schedule ----

def test_cubic_schedule():
    assert cubic_sparsity(0, 10, 0.8) == 0.0
    assert cubic_sparsity(10, 10, 0.8) == pytest.approx(0.8)
    assert cubic_sparsity(5, 10, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert cubic_sparsity(2, 4, 0.9, initial=0.1) == pytest.approx(0.9 - 0.8 * 0.125)
    assert cubic_sparsity(-3, 10, 0.8) == 0.0 and cubic_sparsity(99, 10, 0.8) == pytest.approx(0.8)
    assert cubic_sparsity(0, 0, 0.5) == 0.5
    values = [cubic_sparsity(t, 20, 0.9) for t in range(21)]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(s > 0 for s in steps) and all(b < a for a, b in zip(steps, steps[1:]))  # rises fast, then levels off
    for bad in [dict(final=1.0), dict(final=0.5, initial=0.6), dict(final=-0.1)]:
        with pytest.raises(ValueError):
            cubic_sparsity(1, 10, **bad)


@pytest.mark.parametrize('scope', ['global', 'layer'])
@pytest.mark.parametrize('name', MODELS)
def test_iterative_pruner_follows_the_schedule(name, scope):
    model = _model(name)
    x = images(2)
    pruner = IterativePruner(model, final_amount=0.75, steps=3, scope=scope)
    layers = prunable_layers(model)
    previous = None
    for t in range(1, 4):
        amount = pruner.step()
        assert amount == pytest.approx(cubic_sparsity(t, 3, 0.75))
        stats = sparsity(model)
        assert stats.overall == pytest.approx(amount, abs=2e-3)
        if scope == 'layer':
            assert all(abs(f - amount) < 0.01 for f in stats.layers.values())
        masks = {n: m.weight_mask.clone() for n, m in layers.items()}
        if previous is not None:  # pruned weights are never revived
            assert all((masks[n] <= previous[n]).all() for n in masks)
        previous = masks
        _finetune(model, x, steps=1)
    assert pruner.done and pruner.step() == pytest.approx(0.75)
    assert pruner.state_dict() == dict(step_count=3, amount=pytest.approx(0.75))


# ---- structured ----

def _zero_vit_structures(model, heads, units):
    """The masked equivalent of head/unit removal: the removed structures' weights zeroed."""
    with torch.no_grad():
        for blk, h, u in zip(model.blocks, heads, units):
            attn, mlp = blk.attn, blk.mlp
            H, D = attn.num_heads, attn.head_dim
            for i in sorted(set(range(H)) - set(h.tolist())):
                rows = torch.cat([torch.arange(t * H * D + i * D, t * H * D + (i + 1) * D) for t in range(3)])
                attn.qkv.weight[rows] = 0
                attn.qkv.bias[rows] = 0
                attn.proj.weight[:, i * D:(i + 1) * D] = 0
            drop = sorted(set(range(mlp.fc1.out_features)) - set(u.tolist()))
            mlp.fc1.weight[drop] = 0
            mlp.fc1.bias[drop] = 0
            mlp.fc2.weight[:, drop] = 0
    return model


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('name,kwargs', [
    ('test_dynamicvit', {}),
    ('test_dynamicvit2', {}),
    ('test_evovit', dict(keep_ratio=1.0)),  # see below for the default keep ratio
])
def test_structured_vit_matches_masked_model(name, kwargs, fused):
    model = _model(name, **kwargs)
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    with torch.no_grad():  # make block 0's head 1 and its first 5 hidden units the weakest
        attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
        H, D = attn.num_heads, attn.head_dim
        for t in range(3):
            attn.qkv.weight[t * H * D + D:t * H * D + 2 * D] *= 1e-3
        attn.proj.weight[:, D:2 * D] *= 1e-3
        mlp.fc1.weight[:5] *= 1e-3
        mlp.fc2.weight[:, :5] *= 1e-3
    pruned = copy.deepcopy(model)
    heads = prune_attention_heads(pruned, 0.5)
    units = prune_mlp_units(pruned, 0.25, p=2)
    assert heads[0].tolist() == [0]
    assert not set(range(5)) & set(units[0].tolist())
    masked = _zero_vit_structures(copy.deepcopy(model), heads, units)

    hidden = model.blocks[0].mlp.fc1.out_features
    assert pruned_structure(pruned) == dict(num_heads=[1] * 4, mlp_hidden=[hidden - round(0.25 * hidden)] * 4)
    for blk in pruned.blocks:
        assert blk.attn.qkv.weight.shape == (3 * blk.attn.head_dim, 32) and blk.attn.proj.weight.shape == (32, 16)
        assert blk.attn.attn_dim == blk.attn.head_dim and blk.attn.scale == blk.attn.head_dim ** -0.5
        assert blk.mlp.fc1.weight.shape[0] == blk.mlp.fc2.weight.shape[1] == 48
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())

    x = images(3)
    with torch.no_grad():
        assert_rounding_close(pruned, pruned(x), masked(x))
        if isinstance(model, dynvit.DynamicVisionTransformer):
            _, aux = masked(x, return_aux=True)
            decisions = [d.round() for d in aux.decisions]  # the masked (training) computation
            assert_rounding_close(pruned, pruned(x, decisions=decisions), masked(x, decisions=decisions))
            pruned.mode = masked.mode = 'threshold'  # packed images
            assert_rounding_close(pruned, pruned(x), masked(x))
            pruned.mode = masked.mode = 'topk'
    # fewer MACs, and the analytic count is what torch's FLOP counter sees at batch 1
    _, before = profile(model, x[:1])
    _, after = profile(pruned, x[:1])
    assert after.mean_macs < 0.75 * before.mean_macs
    assert abs(count_flops(pruned, x[:1]) / 2 - after.mean_macs) / after.mean_macs < 0.02
    # training still runs and reaches the shrunk layers
    pruned.train()
    logits, aux = pruned(x, return_aux=True)
    training_loss(pruned, logits, aux, torch.tensor([0, 1, 2])).backward()
    assert pruned.blocks[1].attn.qkv.weight.grad.abs().sum() > 0


def test_structured_evovit_mlp_at_its_keep_ratio():
    """MLP units leave the class attention alone, so the slow-fast split is the same. (Removing
    a head is not zeroing it there: a zeroed head still votes in the head-averaged ranking.)"""
    model = _model('test_evovit')
    pruned = copy.deepcopy(model)
    units = prune_mlp_units(pruned, 0.5, scope='global')
    heads = [torch.arange(b.attn.num_heads) for b in model.blocks]
    masked = _zero_vit_structures(copy.deepcopy(model), heads, units)
    x = images(3)
    with torch.no_grad():
        assert_rounding_close(pruned, pruned(x), masked(x))
    sizes = pruned_structure(pruned)['mlp_hidden']
    assert sum(sizes) == 4 * 64 - round(0.5 * 4 * 64) and min(sizes) >= 1
    prune_attention_heads(pruned, 0.5)
    with torch.no_grad():
        assert torch.isfinite(pruned(x)).all()


def test_structured_fbs_resnet_matches_masked_model():
    model = _model('test_fbs_resnet')
    pruned = copy.deepcopy(model)
    keep = prune_block_channels(pruned, 0.5)
    masked = copy.deepcopy(model)
    with torch.no_grad():  # removed channels: conv1 filter and bn1 zeroed, so relu(bn1(conv1 x)) = 0
        for blk, k in zip(basic_blocks(masked), keep):
            drop = sorted(set(range(blk.conv1.out_channels)) - set(k.tolist()))
            blk.conv1.weight[drop] = 0
            blk.bn1.weight[drop] = 0
            blk.bn1.bias[drop] = 0
            blk.conv2.weight[:, drop] = 0
    for orig, blk in zip(basic_blocks(model), basic_blocks(pruned)):
        c = orig.conv1.out_channels // 2
        assert blk.conv1.weight.shape[0] == blk.bn1.running_mean.shape[0] == blk.conv2.weight.shape[1] == c
        assert blk.gate1.fc.weight.shape == (c, orig.gate1.in_channels)  # one gate output per conv1 channel
        assert blk.gate2.fc.weight.shape == (orig.gate2.out_channels, c)  # gate2 reads conv1's pooled output
    assert pruned_structure(pruned) == dict(block_widths=[4, 8, 16, 32])

    x = images(3)
    with torch.no_grad():
        # gates off: the plain ResNet computation
        pruned.density = masked.density = 1.0
        assert_rounding_close(pruned, pruned(x), masked(x))
        # gates on: the same kept channels (renumbered) give the same outputs
        pruned.density = masked.density = 0.5
        out, aux = pruned(x, return_aux=True)  # skipped (sliced) inference
        assert aux.kept_channels[0].tolist()[::2] == [2, 4, 8, 16]  # density of the remaining channels
        original = []  # gate1 picks conv1 channels (renumbered by the pruning), gate2 conv2's (unchanged)
        for b, k in enumerate(keep):
            original += [k[aux.indices[2 * b]], aux.indices[2 * b + 1]]
        assert_rounding_close(pruned, pruned(x, decisions=aux.indices), out)
        assert_rounding_close(pruned, masked(x, decisions=original), out)
    _, before = profile(model, x[:1])
    _, after = profile(pruned, x[:1])
    assert after.mean_macs < before.mean_macs
    assert abs(count_flops(pruned, x[:1]) / 2 - after.mean_macs) / after.mean_macs < 0.02
    pruned.density = 1.0
    _, dense_after = profile(pruned, x[:1])
    model.density = 1.0
    _, dense_before = profile(model, x[:1])
    assert dense_after.mean_macs < dense_before.mean_macs


@pytest.mark.parametrize('name', MODELS)
def test_save_and_load_a_pruned_model(name, tmp_path):
    model = _model(name, num_classes=7)
    if hasattr(model, 'blocks'):
        prune_attention_heads(model, 0.5)
        prune_mlp_units(model, 0.5, scope='global', round_to=4)
    else:
        prune_block_channels(model, 0.4, scope='global')
    magnitude_prune(model, 0.5)  # masks stay on the model, the file gets the permanent weights
    x = images(2)
    _finetune(model, images(4), steps=1)  # leaves non-leaf masked weights behind
    path = str(tmp_path / 'pruned.safetensors')
    dynvit.save_pruned(model, path, extra={'note': 'pruned'})
    assert masked_layers(model)

    meta = dynvit.read_dynvit_metadata(path)
    assert meta['extra']['pruned_structure'] == pruned_structure(model)
    assert meta['extra']['note'] == 'pruned' and meta['extra']['weight_sparsity'] == pytest.approx(0.5, abs=1e-3)
    loaded = dynvit.load_model(path).eval()
    assert pruned_structure(loaded) == pruned_structure(model) and loaded.num_classes == 7
    assert sparsity(loaded).overall == pytest.approx(0.5, abs=1e-3)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))  # saved and reloaded: the same weights and kernels
    plain = dynvit.load_model(path).eval()  # load_model reads the stored structure too
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))

    fresh = dynvit.create_model(name, num_classes=7)
    apply_structure(fresh, pruned_structure(model))
    assert pruned_structure(fresh) == pruned_structure(model)


def test_structured_pruning_refusals():
    model = dynvit.create_model('test_dynamicvit')
    magnitude_prune(model, 0.5)
    with pytest.raises(ValueError, match='remove_masks'):
        prune_attention_heads(model, 0.5)
    remove_masks(model)
    prune_attention_heads(model, 0.5)  # fine once the masks are permanent
    with pytest.raises(ValueError, match='either amount or keep'):
        prune_mlp_units(model, 0.5, keep=[None] * 4)
    with pytest.raises(ValueError, match='keep must be distinct'):
        prune_mlp_units(model, keep=[[0, 0], None, None, None])
    with pytest.raises(ValueError, match='does not fit'):
        apply_structure(model, dict(num_heads=[2, 2, 2, 2]))
    with pytest.raises(ValueError, match='scale_norm'):
        prune_attention_heads(timm.create_model('vit_tiny_patch16_224', img_size=32, depth=1,
                                                scale_attn_norm=True), 0.5)
    with pytest.raises(ValueError, match='BasicBlock'):
        prune_block_channels(dynvit.create_model('test_fbs_efficientnet'), 0.5)

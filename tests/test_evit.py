"""EViT: the official outputs, a plain per-image reference (outputs and gradients), the dense limit,
batch vs single images, MACs against torch's counter, settings, checkpoints, ``evit_from_vit``,
training through the trainer, and the command line."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import dynvit
from dynvit.models import evit
from dynvit.runtime import count_flops
from dynvit.train import Trainer, TrainConfig

from helpers import Colours, dense_twin, images, make_spec, plain_vit, run_cli
from numerics import assert_matches, assert_rounding_close, gradient_tolerance, rounding_tolerance, tolerance

FIXTURES = Path(__file__).parent / 'fixtures' / 'official'

# (registered test variant, extra kwargs): fusion with class-token pooling; dropping with a register token,
# LayerScale, qk-norm, conv stem and average pooling; fused attention off; registers with per-block ratios
SPECS = {
    'fuse': ('test_evit', dict()),
    'drop_reg_ls_qknorm': ('test_evit2', dict()),
    'explicit_attention': ('test_evit', dict(fused=False)),
    'regs_ratios': ('test_evit', dict(reg_tokens=2, drop_loc=(0, 1, 3), keep_ratio=(0.8, 0.5, 0.3))),
}


def make_evit(spec, **kwargs):
    return make_spec(SPECS, spec, sharpen=True, **kwargs)  # class-attention scores far apart at the boundary


# ---- the official code ----

def _load_official(name):
    meta = json.loads((FIXTURES / f'{name}.json').read_text())
    t = load_file(str(FIXTURES / f'{name}.safetensors'))
    kw = meta['constructor_kwargs']
    loc = [i for i, r in enumerate(kw['keep_rate']) if r < 1]
    model = dynvit.create_model(
        'evit_small_patch16_224', img_size=kw['img_size'], patch_size=kw['patch_size'], embed_dim=kw['embed_dim'],
        depth=kw['depth'], num_heads=kw['num_heads'], num_classes=kw['num_classes'], drop_loc=loc,
        keep_ratio=[kw['keep_rate'][i] for i in loc], fuse_token=kw['fuse_token']).eval()
    state = {k[len('state_dict.'):]: v for k, v in t.items() if k.startswith('state_dict.')}
    model.load_state_dict(evit.checkpoint_filter_fn({'model': state}, model))  # the released layout, ckpt['model']
    return model, t, meta


@pytest.mark.numerics
@pytest.mark.parametrize('name', ['evit_tiny_a_sep', 'evit_tiny_a'])
def test_matches_official_eval_output_and_intermediates(name):
    """Both fixtures give the official logits, scores, kept and fused tokens (local and original
    indices) and fused weights; in the plain one class-attention scores at the keep boundary differ
    by 3e-8, so an image whose decision rounds the other way is reported instead."""
    model, t, meta = _load_official(name)
    with torch.no_grad():
        out, aux = model(t['input'], return_aux=True)
    assert aux.tokens_per_block[0].tolist() == meta['tokens_into_each_block_attention_incl_cls']
    assert aux.mlp_tokens[0].tolist() == meta['tokens_into_each_block_mlp_incl_cls']
    decisions, fused = [], []
    for s, stage in enumerate(meta['pruning_stages']):
        keep = t[f'aux.stage{s}.keep_idx_local']
        assert keep.shape[1] == stage['num_keep'] == model.num_keep(s, stage['num_non_cls_in'])
        assert (aux.token_index[s][:, -1] == -1).all()  # the fused token, last
        dropped = torch.ones_like(aux.scores[s], dtype=torch.bool).scatter(1, aux.keep_index[s], False)
        fused.append(dropped.nonzero()[:, 1].view(keep.shape[0], -1))
        decisions += [(aux.keep_index[s].sort(1).values, keep.sort(1).values),
                      (aux.token_index[s][:, :keep.shape[1]].sort(1).values,
                       t[f'aux.stage{s}.keep_idx_orig_patch'].sort(1).values),
                      (fused[s], t[f'aux.stage{s}.fused_idx_local'])]
    compared = assert_matches(model, t['input'], out, t['output'], name, decisions)
    assert name.endswith('_a') or compared.all()
    for s in range(len(meta['pruning_stages'])):  # on the images whose decisions agree
        scores = t[f'aux.stage{s}.cls_attn'][compared]
        assert_rounding_close(model, aux.scores[s][compared], scores)
        if name.endswith('_sep'):  # the topk order too, where scores stand apart (in the plain file they may not)
            assert torch.equal(aux.keep_index[s], t[f'aux.stage{s}.keep_idx_local'])
        assert_rounding_close(model, aux.scores[s].gather(1, fused[s])[compared],
                              t[f'aux.stage{s}.fused_weight'][compared])


# ---- a plain reference ----

def reference(model, x):
    """The released code's computation written plainly, image by image: the full attention map,
    the class row from it, ``ceil`` of the current tokens kept in descending order, the others
    summed with their attention as weights. Returns logits and the smallest score gap at a keep
    boundary."""
    P = model.num_prefix_tokens
    tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    logits, gap = [], float('inf')
    for t in tokens:
        t = t[None]
        for i, block in enumerate(model.blocks):
            if i not in model.drop_loc:
                t = block(t)
                continue
            attn, y = block.attn, block.norm1(t)
            qkv = attn.qkv(y).reshape(1, -1, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            a = (attn.q_norm(qkv[0]) @ attn.k_norm(qkv[1]).transpose(-2, -1) * attn.scale).softmax(-1)
            score = a[0, :, 0, P:].mean(0)
            t = t + block.ls1(attn(y))
            n = t.shape[1] - P
            k = math.ceil(model.keep_ratio[model.drop_loc.index(i)] * n)
            if k < n:
                order = score.argsort(descending=True)
                gap = min(gap, float((score[order[k - 1]] - score[order[k]]).detach()))
                keep, rest = order[:k], order[k:]
                parts = [t[:, :P], t[:, P + keep]]
                if model.fuse_token:
                    parts.append((score[rest, None] * t[0, P + rest]).sum(0)[None, None])
                t = torch.cat(parts, dim=1)
            t = t + block.ls2(block.mlp(block.norm2(t)))
        logits.append(model.forward_head(model.norm(t)))
    return torch.cat(logits), gap


@pytest.mark.parametrize('spec,fuse', [('fuse', True), ('drop_reg_ls_qknorm', False), ('explicit_attention', False),
                                       ('regs_ratios', True)])
def test_outputs_and_gradients_match_the_plain_reference(spec, fuse):
    """The fused token's weights carry gradient to q and k, as the class attention does in the released code."""
    model = make_evit(spec, fuse_token=fuse).train()
    x = images(3)
    ours = model(x)
    ours.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref, gap = reference(model, x)
    assert gap > rounding_tolerance(model, torch.ones(())), 'class-attention ties at the keep boundary: pick another seed'
    assert_rounding_close(model, ours, ref)
    ref.square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=0, atol=gradient_tolerance(model, p.grad), msg=n)
        assert grads[n].abs().sum() > 0, f'{n} gets no gradient'


# ---- the dense limit, batches, MACs ----

@pytest.mark.parametrize('spec', list(SPECS))
def test_keep_ratio_one_is_the_dense_timm_model(spec):
    model = make_evit(spec)
    dense = dense_twin(model)
    x = images(3)
    with torch.no_grad():
        expected = dense(x)
        torch.testing.assert_close(model.dense_copy()(x), expected, rtol=0, atol=0)  # the distillation teacher
        out, aux = model.set_sparsity(keep_ratio=1.0)(x, return_aux=True)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert aux.kept.tolist() == [[64] * len(model.drop_loc)] * 3
    assert (aux.tokens_per_block == 64 + model.num_prefix_tokens).all() and aux.cls_attention_keys.sum() == 0
    assert torch.equal(aux.macs, torch.full((3,), aux.dense_macs))


@pytest.mark.parametrize('spec', ['fuse', 'drop_reg_ls_qknorm'])
def test_batch_equals_single_images(spec):
    model = make_evit(spec)
    x = images(4)
    with torch.no_grad():
        batch, aux = model(x, return_aux=True)
        assert not torch.equal(aux.token_of[0][0], aux.token_of[0][1])  # images choose their own tokens
        singles = [model(x[b:b + 1], return_aux=True) for b in range(4)]
    # a batch rounds differently from one image: logits up to rounding, decisions exact unless at a tie
    assert_matches(model, x, torch.cat([one for one, _ in singles]), batch, 'single images',
                   [(torch.cat([a.macs for _, a in singles]), aux.macs)] +
                   [(torch.cat([a.token_index[s] for _, a in singles]), idx) for s, idx in enumerate(aux.token_index)])


@pytest.mark.parametrize('name,kwargs', [('test_evit', dict()), ('test_evit2', dict()),
                                         ('test_evit', dict(fuse_token=False, keep_ratio=(0.3, 0.9))),
                                         ('test_evit2', dict(fuse_token=True, drop_loc=(0,), keep_ratio=0.05))])
def test_macs_equal_torch_flop_counter(name, kwargs):
    model = dynvit.create_model(name, **kwargs).eval()
    x = images(1)
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
    assert int(aux.macs[0]) * 2 == count_flops(model, x)


def test_aux_marks_kept_fused_and_dropped_patches():
    model = make_evit('fuse', keep_ratio=0.5)
    with torch.no_grad():
        _, aux = model(images(2), return_aux=True)
    # 64 -> 32 kept + fused; 33 -> 17 kept + fused: the first fused token is kept or fused again
    assert aux.tokens_per_block[0].tolist() == [65, 65, 34, 19] and aux.mlp_tokens[0].tolist() == [65, 34, 19, 19]
    for kept, fused, owner, index in zip(aux.kept_masks, aux.fused_masks, aux.token_of, aux.token_index):
        assert not (kept & fused).any() and (kept | fused).all()  # with fusion nothing is lost
        for b in range(2):  # a kept patch's token is the patch itself
            own = kept[b].nonzero()[:, 0]
            assert torch.equal(index[b, owner[b, own]], own)
            assert (index[b, owner[b, fused[b]]] == -1).all()
    assert torch.equal(aux.fused_masks[1].sum(1), 64 - aux.kept[:, 1]) and set(aux.kept[:, 1].tolist()) <= {16, 17}
    model.fuse_token = False
    with torch.no_grad():
        _, aux = model(images(2), return_aux=True)
    assert aux.kept.tolist() == [[32, 16]] * 2 and not any(m.any() for m in aux.fused_masks)
    assert aux.tokens_per_block[0].tolist() == [65, 65, 33, 17] and (aux.token_of[1] >= 0).sum(1).tolist() == [16, 16]


# ---- settings and errors ----

def test_settings_change_on_a_built_model_and_survive_save_and_load(tmp_path):
    model = dynvit.create_model('test_evit').eval()
    x = images(2)
    model.keep_ratio = 0.25
    model.drop_loc = (0, 2, 3)  # a single ratio carries over to the new blocks
    assert model.keep_ratio == (0.25,) * 3 and model.sparsity_level == (0.25,) * 3
    model.set_sparsity(keep_ratio=(0.5, 0.5, 0.9), fuse_token=False)
    with torch.no_grad():
        out, aux = model(x, return_aux=True)
    assert aux.tokens_per_block[0].tolist() == [65, 33, 33, 17] and aux.mlp_tokens[0].tolist() == [33, 33, 17, 16]
    path = str(tmp_path / 'evit.safetensors')
    dynvit.save_model(model, path)
    loaded = dynvit.load_model(path).eval()
    assert loaded.sparsity_config() == dict(drop_loc=[0, 2, 3], keep_ratio=[0.5, 0.5, 0.9], fuse_token=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)
    assert evit.default_drop_loc(12) == (3, 6, 9) and evit.default_drop_loc(4) == (1, 2, 3)
    assert evit.EViT(img_size=32, patch_size=8, embed_dim=16, depth=8, num_heads=2).drop_loc == (2, 4, 6)


def test_bad_settings_are_one_line_errors():
    model = dynvit.create_model('test_evit')
    before = model.sparsity_config()
    for kwargs, match in [
        (dict(keep_ratio=0.0), r'keep_ratio is .* must be in \(0, 1\]'),
        (dict(keep_ratio=1.5), r'\(0, 1\]'),
        (dict(keep_ratio=-0.2), r'\(0, 1\]'),
        (dict(keep_ratio=(0.5, 0.5, 0.5)), r'3 values for 2 pruning blocks \(drop_loc\)'),
        (dict(drop_loc=(2, 4)), r'drop_loc must be increasing block indices in \[0, 4\)'),
        (dict(drop_loc=(-1, 2)), r'\[0, 4\)'),
        (dict(drop_loc=(2, 1)), 'increasing'),
        (dict(drop_loc='ab'), 'sequence of block indices'),
        (dict(drop_loc=(1, 3), keep_ratio=2.0), r'\(0, 1\]'),
        (dict(fuse_token='yes'), 'True or False'),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            model.set_sparsity(**kwargs)
        assert '\n' not in str(e.value)
        assert model.sparsity_config() == before, f'{kwargs} changed the model'
    model.set_sparsity(keep_ratio=(0.5, 0.3))
    with pytest.raises(ValueError, match='give keep_ratio with the new drop_loc'):
        model.drop_loc = (1, 2, 3)
    for kwargs, match in [
        (dict(class_token=False, global_pool='avg'), 'class_token=False is not supported'),
        (dict(global_pool='map'), 'attention pooling'),
        (dict(keep_ratio=0), r'\(0, 1\]'),
        (dict(drop_loc=(4,)), r'\[0, 4\)'),
        (dict(block_fn=timm.models.vision_transformer.ParallelScalingBlock), 'timm Block blocks'),
        (dict(features_only=True), 'features_only'),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            dynvit.create_model('test_evit', **kwargs)
        assert '\n' not in str(e.value)
    with pytest.raises(NotImplementedError, match='keep_ratio=1.0'):
        model.forward_intermediates(images(1))


def test_gradient_checkpointing_any_image_size_and_bf16():
    model = make_evit('drop_reg_ls_qknorm', fuse_token=True).train()
    x = images(2)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        model(x).logsumexp(1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)  # checkpointing recomputes the same forward with the same kernels
    model = dynvit.create_model('test_evit', dynamic_img_size=True).eval()
    with torch.no_grad():
        _, aux = model(images(2, 48), return_aux=True)
        assert aux.num_patches == 144 and aux.tokens_per_block[0].tolist() == [145, 145, 103, 74]  # ceil(0.7 n) + 2
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(images(2))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# ---- checkpoints and evit_from_vit ----

def test_dense_and_dynamicvit_checkpoints_load(tmp_path):
    deit = plain_vit()
    path = str(tmp_path / 'deit.safetensors')
    save_file(deit.state_dict(), path)
    x = images(2)
    model = dynvit.create_model('test_evit', keep_ratio=1.0, pretrained=True,
                                pretrained_cfg_overlay=dict(file=path, num_classes=10)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), deit(x), rtol=0, atol=0)
    # the zoo's dense ViT is a DynamicViT file at keep ratio 1.0: its geometry and weights, EViT's blocks for the depth
    source = dynvit.create_model('test_dynamicvit', keep_ratio=1.0, stem='conv').eval()
    path = str(tmp_path / 'dyvit.safetensors')
    dynvit.save_model(source, path)
    model = dynvit.create_model('evit_tiny_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=path)).eval()
    assert model.drop_loc == (1, 2, 3) and model.keep_ratio == (0.7,) * 3
    with torch.no_grad():
        torch.testing.assert_close(model.set_sparsity(keep_ratio=1.0)(x), source(x), rtol=0, atol=0)
    save_file(plain_vit(depth=3).state_dict(), path)
    with pytest.raises(ValueError, match='missing: blocks.3'):
        dynvit.create_model('test_evit', pretrained=True, pretrained_cfg_overlay=dict(file=path))


def test_evit_from_vit_equals_the_registered_model(tmp_path):
    vit = plain_vit()
    model = evit.evit_from_vit(vit, keep_ratio=0.7, drop_loc=(1, 2))
    registered = dynvit.create_model('test_evit').eval()
    registered.load_state_dict(vit.state_dict())
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), registered(x), rtol=0, atol=0)
        model.keep_ratio = 1.0
        torch.testing.assert_close(model(x), vit(x), rtol=0, atol=0)
    assert model.sparsity_config() == dict(drop_loc=[1, 2], keep_ratio=[1.0, 1.0], fuse_token=True)
    assert model.blocks[0].attn.qkv.weight is not vit.blocks[0].attn.qkv.weight  # a copy: vit stays as it is
    applied = dynvit.apply(vit, 'evit', keep_ratio=0.7, drop_loc=(1, 2))  # the generic way, same model
    with torch.no_grad():
        torch.testing.assert_close(applied(x), registered(x), rtol=0, atol=0)
    regularised = evit.evit_from_vit(plain_vit(patch_drop_rate=0.25, drop_path_rate=0.1, attn_drop_rate=0.05,
                                               proj_drop_rate=0.1, pos_drop_rate=0.1, drop_rate=0.2))
    assert regularised.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1) and regularised.patch_drop.prob == 0.25
    path = str(tmp_path / 'from_vit.safetensors')
    dynvit.save_model(model.set_sparsity(keep_ratio=0.5), path)
    with torch.no_grad():
        torch.testing.assert_close(dynvit.load_model(path).eval()(x), model(x), rtol=0, atol=0)
    deit = timm.create_model('deit_tiny_patch16_224', img_size=32, patch_size=4, embed_dim=32, num_heads=2, depth=4,
                             reg_tokens=1, init_values=0.1, qk_norm=True)
    model = evit.evit_from_vit(deit.train())  # the paper's blocks scaled to the depth, its data config and mode
    assert model.drop_loc == (1, 2, 3) and model.training
    assert model.pretrained_cfg['mean'] == deit.pretrained_cfg['mean']
    with torch.no_grad():
        torch.testing.assert_close(model.eval().set_sparsity(keep_ratio=1.0)(x), deit.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize('make,match', [
    (lambda: timm.models.VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                                           class_token=False, global_pool='avg'), 'has none'),
    (lambda: timm.create_model('deit_tiny_distilled_patch16_224', img_size=32, patch_size=4, depth=2),
     'overrides VisionTransformer'),
    (lambda: timm.create_model('resnet10t'), 'needs a timm VisionTransformer'),
    (lambda: dynvit.create_model('test_dynamicvit'), 'already a dynvit DynamicViT model'),
    (lambda: timm.models.VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                                           act_layer='gelu_tanh'), 'cannot rebuild'),
])
def test_evit_from_vit_refuses_what_it_cannot_rebuild(make, match):
    with pytest.raises(ValueError, match=match) as e:
        evit.evit_from_vit(make())
    assert '\n' not in str(e.value)


# ---- training and the command line ----

def test_training_with_keep_rate_warmup_and_distillation_lowers_the_loss():
    torch.manual_seed(0)
    model = dynvit.create_model('test_evit', num_classes=3, keep_ratio=0.5)
    config = TrainConfig(epochs=3, batch_size=8, lr=5e-3, warmup_epochs=0.5, sparsity_start=1.0,
                         sparsity_warmup_epochs=2)
    history = Trainer(model, Colours(), None, config, progress=False).fit()
    assert history[-1]['train_loss'] < history[0]['train_loss']
    assert history[0]['train_sparsity'][0] > 0.5 and history[-1]['train_sparsity'] == [0.5, 0.5]
    assert history[0]['train_keep_rate'] > history[-1]['train_keep_rate']
    assert model.keep_ratio == (0.5, 0.5)
    logits, aux = model(Colours().x[:4], return_aux=True)
    target, teacher = torch.tensor([0, 1, 2, 0]), torch.randn(4, 3)
    loss, parts = model.training_objective(dynvit.losses.ObjectiveConfig())(logits, aux, target, teacher_logits=teacher)
    kl = (teacher.softmax(1) * (teacher.log_softmax(1) - logits.log_softmax(1))).sum(1).mean()
    assert set(parts) == {'ce', 'kl'}  # cross-entropy + 0.5 KL(teacher || student), nothing on the keep rate
    expected = torch.nn.functional.cross_entropy(logits, target) + 0.5 * kl
    torch.testing.assert_close(loss, expected, rtol=0, atol=tolerance(4, expected))  # softmax, log, sums


def test_command_line_predict_and_info(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / 'a.png')
    r = run_cli('predict', 'test_evit', tmp_path / 'a.png', '--keep-ratio', '0.5', '--json')
    assert r.returncode == 0, r.stderr
    pred = json.loads(r.stdout)['predictions'][0]
    assert pred['kept'][0] == 32 and pred['out_of'] == [64, 64] and 0 < pred['macs'] < pred['dense_macs']
    r = run_cli('info', 'test_evit', '--keep-ratio', '0.5', '--json')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info['sparsity'] == dict(drop_loc=[1, 2], keep_ratio=[0.5, 0.5], fuse_token=True)
    assert info['sparse_gmacs'] * 1e9 == pytest.approx(pred['macs'], rel=1e-12)  # the same count, in GMACs

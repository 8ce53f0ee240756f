"""ATS: the official outputs and sampled tokens, a plain per-image reference (outputs and gradients),
the sampling rule, the dense limit, batch vs single images, MACs against torch's counter, settings
and errors, ``dynvit.apply`` on a plain timm ViT, training and the command line."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

import dynvit
from dynvit.layers import sample_points, sample_tokens
from dynvit.models import ats
from dynvit.runtime import count_flops
from dynvit.train import Trainer, TrainConfig

from helpers import Colours, dense_twin, images, make_spec, plain_vit, run_cli
from numerics import assert_matches, assert_rounding_close, gradient_tolerance

FIXTURES = Path(__file__).parent / 'fixtures' / 'official'

# (registered test variant, extra kwargs): class token, blocks 1..3; a register token, LayerScale, qk-norm,
# conv stem, average pooling, per-block budgets; explicit (unfused) attention; two registers, every block
SPECS = {
    'cls': ('test_ats', dict()),
    'reg_ls_qknorm_avg': ('test_ats2', dict()),
    'explicit_attention': ('test_ats', dict(fused=False)),
    'regs_every_block': ('test_ats', dict(reg_tokens=2, ats_blocks=(0, 1, 2, 3), budget=(0.9, 0.7, 0.5, 0.3))),
}


def make(spec, **kwargs):
    return make_spec(SPECS, spec, sharpen=True, **kwargs)  # peaked attention: images keep different counts


# ---- the official code ----

def _official(name):
    meta = json.loads((FIXTURES / f'{name}.json').read_text())
    t = load_file(str(FIXTURES / f'{name}.safetensors'))
    kw = meta['constructor_kwargs']
    model = dynvit.create_model('ats_small_patch16_224', **kw, ats_blocks=meta['ats_blocks'], budget=0.999).eval()
    state = {k[len('state_dict.'):]: v for k, v in t.items() if k.startswith('state_dict.')}
    model.load_state_dict(ats.checkpoint_filter_fn(state, model))  # drops the released code's out_zero_mask
    return model, t, meta


@pytest.mark.numerics
@pytest.mark.parametrize('name', ['ats_tiny_a', 'ats_tiny_b'])
def test_matches_official_eval_output_and_sampled_tokens(name):
    """The released per-image eval path: the same patches kept by every ATS block and logits within
    1e-5 (and rounding); budget 0.999 is its setting (N points per block)."""
    model, t, meta = _official(name)
    N = model.patch_embed.num_patches
    assert all(model.num_points(i, N) == N for i in meta['ats_blocks'])
    x = t['input']
    with torch.no_grad():
        out, aux = model(x, return_aux=True)
    stages = len(meta['ats_blocks'])
    assert aux.sampled_blocks == tuple(meta['ats_blocks'])
    theirs = torch.zeros(x.shape[0], stages, N)
    for b in range(x.shape[0]):
        for s in range(stages):
            theirs[b, s, t[f'aux.image{b}.stage{s}.kept_patches']] = 1.0
    ours = torch.stack(aux.kept_patches, dim=1)
    counts = torch.tensor([[st['kept_patches'] for st in image] for image in meta['stages_per_image']])
    compared = assert_matches(model, x, out, t['output'], name, [(ours, theirs), (aux.kept, counts)])
    assert compared.all(), 'no image of these fixtures sits at a tie'
    assert (out - t['output']).abs().max() <= 1e-5
    keys = [[st['tokens_in'] for st in image] for image in meta['stages_per_image']]
    assert aux.tokens_per_block[:, list(meta['ats_blocks'])].tolist() == keys  # the tokens each ATS block saw
    assert len(set(aux.kept[:, -1].tolist())) > 1  # images keep different numbers of tokens


def test_the_released_batched_path_is_not_per_image():
    """Why the fixtures run each image alone: the released batch pads with tokens that still weigh in."""
    for name in ('ats_tiny_a', 'ats_tiny_b'):
        t = load_file(str(FIXTURES / f'{name}.safetensors'))
        assert (t['output_batched'] - t['output']).abs().max() > 1e-2


# ---- the sampling rule ----

def _released_rule(scores, points):
    """The released sampler for one image, as written there: normalise, sort ascending, cumulative
    sum, min-max normalise, points from the smallest positive value to 1, nearest by argmin over all."""
    w = scores / scores.sum()
    ranked, order = w.sort()
    cdf = ranked.cumsum(0)
    ncdf = (cdf - cdf.min()) / (cdf.max() - cdf.min())
    start = (ncdf + (ncdf == 0).float() * 1e8).min()
    y = sample_points(start[None], points)[0]
    pick = (y[:, None] - ncdf[None, :]).abs().argmin(1)
    return torch.zeros(len(scores), dtype=torch.bool).index_fill_(0, order[pick.unique()], True)


def test_sampling_equals_the_released_rule_per_image_with_padding():
    g = torch.Generator().manual_seed(0)
    for points in (1, 2, 7, 40, 64):
        lengths = [64, 50, 3, 2, 1, 33]
        scores = torch.rand(len(lengths), 64, generator=g) ** 6  # a few significant tokens
        valid = torch.arange(64)[None, :] < torch.tensor(lengths)[:, None]
        keep = sample_tokens(scores.masked_fill(~valid, 123.0), valid, points)
        for b, n in enumerate(lengths):
            assert not keep[b, n:].any() and 1 <= keep[b].sum() <= min(points, n)
            if n > 2 and points > 1:
                assert torch.equal(keep[b, :n], _released_rule(scores[b, :n], points))
    # evenly spread significance: all points land on distinct tokens; concentrated: a few
    flat = sample_tokens(torch.ones(1, 10), torch.ones(1, 10, dtype=torch.bool), 9)
    assert flat.sum() == 9 and not flat[0, 0]  # the least significant token lies below the first point
    # concentrated on one token: the first point takes the second least significant, the points below
    # 0.5 the last of the small ones (nearer than the big one at 1), the rest the big one
    peaked = torch.tensor([[1e-4] * 9 + [1.0]])
    kept = sample_tokens(peaked, torch.ones(1, 10, dtype=torch.bool), 9)
    assert kept[0].nonzero()[:, 0].tolist() == [1, 8, 9]
    assert torch.allclose(sample_points(torch.tensor([0.1]), 4), torch.tensor([[0.1, 0.4, 0.7, 1.0]]))


# ---- a plain reference ----

def reference(model, x):
    """ATS written plainly, image by image: the full attention map, the class row from it times the
    value norms, the released sampling rule, the kept tokens' rows of the dense block."""
    P = model.num_prefix_tokens
    tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    logits = []
    for t in tokens:
        t = t[None]
        for i, block in enumerate(model.blocks):
            points = model.num_points(i, model.patch_embed.num_patches)
            if points is None:
                t = block(t)
                continue
            attn, y = block.attn, block.norm1(t)
            qkv = attn.qkv(y).reshape(1, -1, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
            a = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)  # [1, H, L, L]
            score = a[0, :, 0, P:].sum(0) * v[0].transpose(0, 1).flatten(1)[P:].norm(dim=1)
            keep = torch.cat([torch.arange(P), P + _released_rule(score.detach(), points).nonzero()[:, 0]])
            o = (a[:, :, keep] @ v).transpose(1, 2).flatten(2)
            t = t[:, keep] + block.ls1(attn.proj(attn.norm(o)))
            t = t + block.ls2(block.mlp(block.norm2(t)))
        logits.append(model.forward_head(model.norm(t)))
    return torch.cat(logits)


@pytest.mark.parametrize('spec', list(SPECS))
def test_outputs_and_gradients_match_the_plain_reference(spec):
    model = make(spec).train()
    x = images(3)
    ours = model(x)
    ours.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = reference(model, x)
    assert_rounding_close(model, ours, ref)
    ref.square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=0, atol=gradient_tolerance(model, p.grad), msg=n)


def test_stochastic_depth_draws_once_per_image_of_a_packed_batch():
    """timm's DropPath sees a packed batch as one sample; per image, each image's branch is kept or
    dropped whole (and scaled by 1 / keep), independently of the others."""
    from timm.layers import DropPath
    from dynvit.layers import packed_drop_path
    drop = DropPath(0.5).train()
    torch.manual_seed(0)
    lengths = [3, 1, 4, 2, 5, 3, 2, 4]
    out = packed_drop_path(drop, torch.ones(1, sum(lengths), 2), lengths)[0, :, 0]
    per_image = [part.unique().tolist() for part in out.split(lengths)]
    assert all(len(v) == 1 and v[0] in (0.0, 2.0) for v in per_image) and len({v[0] for v in per_image}) == 2
    assert torch.equal(packed_drop_path(drop.eval(), torch.ones(1, 5, 2), [5]), torch.ones(1, 5, 2))
    model = dynvit.create_model('test_ats', drop_path_rate=0.5, budget=0.5).train()
    model(images(4)).sum().backward()  # trains with it


# ---- the dense limit, batches, MACs ----

@pytest.mark.parametrize('spec', list(SPECS))
def test_budget_one_is_the_dense_timm_model(spec):
    model = make(spec)
    dense = dense_twin(model)
    x = images(3)
    with torch.no_grad():
        expected = dense(x)
        torch.testing.assert_close(model.dense_copy()(x), expected, rtol=0, atol=0)  # the distillation teacher
        out, aux = model.set_sparsity(budget=1.0)(x, return_aux=True)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert model.is_dense() and model.static_graph_problem() is None and aux.kept.shape == (3, 0)
    assert (aux.tokens_per_block == 64 + model.num_prefix_tokens).all() and aux.token_mask is None
    assert torch.equal(aux.macs, torch.full((3,), aux.dense_macs))


@pytest.mark.parametrize('spec', ['cls', 'reg_ls_qknorm_avg', 'regs_every_block'])
def test_batch_equals_single_images(spec):
    model = make(spec)
    x = images(6)
    with torch.no_grad():
        batch, aux = model(x, return_aux=True)
        singles = [model(x[b:b + 1], return_aux=True) for b in range(6)]
    assert len(set(map(tuple, aux.kept.tolist()))) > 1  # images keep their own number of tokens
    assert aux.token_mask is not None and torch.equal(aux.token_mask.sum(1), aux.query_tokens[:, -1])
    assert_matches(model, x, torch.cat([one for one, _ in singles]), batch, 'single images',
                   [(torch.cat([a.macs for _, a in singles]), aux.macs)] +
                   [(torch.cat([a.kept_patches[s] for _, a in singles]), m) for s, m in enumerate(aux.kept_patches)])
    assert torch.equal(aux.executed_macs, aux.macs)  # packed: each image computed its own tokens only


@pytest.mark.parametrize('name,kwargs', [('test_ats', dict()), ('test_ats2', dict()),
                                         ('test_ats', dict(budget=(0.05, 0.9, 0.3))),
                                         ('test_ats2', dict(ats_blocks=(3,), budget=0.2))])
def test_macs_equal_torch_flop_counter(name, kwargs):
    """Per image, from the shapes the pass executed: the FLOP counter on single images agrees."""
    model = dynvit.create_model(name, **kwargs).eval()
    x = images(3)
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
    for b in range(3):
        assert int(aux.macs[b]) * 2 == count_flops(model, x[b:b + 1])
    assert (aux.macs < aux.dense_macs).all()


def test_aux_counts_points_and_kept_patches():
    model = make('cls', budget=0.3)  # ceil(0.3 * 64) = 20 points in blocks 1, 2, 3
    with torch.no_grad():
        _, aux = model(images(4), return_aux=True)
    assert aux.num_points == (20, 20, 20) and aux.sampled_blocks == (1, 2, 3)
    assert (aux.kept <= 20).all() and (aux.kept[:, 1:] <= aux.kept[:, :-1]).all()
    assert torch.equal(aux.tokens_per_block[:, 2:], aux.query_tokens[:, 1:3])  # a block's keys: the last kept
    assert torch.equal(aux.query_tokens[:, 1:], aux.kept + 1)
    for earlier, later in zip(aux.kept_masks, aux.kept_masks[1:]):
        assert not (later & ~earlier).any()  # a dropped patch never comes back


# ---- settings and errors ----

def test_settings_change_on_a_built_model_and_survive_save_and_load(tmp_path):
    model = dynvit.create_model('test_ats').eval()
    assert model.ats_blocks == (1, 2, 3) and model.budget == (0.6,) * 3 and model.sparsity_level == (0.6,)
    model.budget = 0.25
    model.ats_blocks = (0, 2)  # a single budget carries over to the new blocks
    assert model.budget == (0.25, 0.25)
    model.set_sparsity(budget=(0.5, 0.9))
    assert model.sparsity_level == (0.5, 0.9) and model.num_points(2, 64) == 58 and model.num_points(1, 64) is None
    x = images(2)
    with torch.no_grad():
        out = model(x)
    path = str(tmp_path / 'ats.safetensors')
    dynvit.save_model(model, path)
    loaded = dynvit.load_model(path).eval()
    assert loaded.sparsity_config() == dict(ats_blocks=[0, 2], budget=[0.5, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)
    assert ats.default_ats_blocks(12) == tuple(range(3, 12)) and ats.default_ats_blocks(4) == (1, 2, 3)
    assert 'data-dependent' in model.static_graph_problem()


def test_bad_settings_are_one_line_errors():
    model = dynvit.create_model('test_ats')
    before = model.sparsity_config()
    for kwargs, match in [
        (dict(budget=0.0), r'budget is .* must be in \(0, 1\]'),
        (dict(budget=1.5), r'\(0, 1\]'),
        (dict(budget=(0.5, 0.5)), r'2 values for 3 ATS blocks'),
        (dict(ats_blocks=(2, 4)), r'ats_blocks must be increasing block indices in \[0, 4\)'),
        (dict(ats_blocks=(2, 1)), 'increasing'),
        (dict(ats_blocks='ab'), 'sequence of block indices'),
        (dict(threshold=0.5), "'threshold' is not a sparsity setting of ATS models"),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            model.set_sparsity(**kwargs)
        assert '\n' not in str(e.value)
        assert model.sparsity_config() == before, f'{kwargs} changed the model'
    for kwargs, match in [
        (dict(class_token=False, global_pool='avg'), 'class_token=False is not supported'),
        (dict(global_pool='map'), 'attention pooling'),
        (dict(block_fn=timm.models.vision_transformer.ParallelScalingBlock), 'timm Block blocks'),
        (dict(features_only=True), 'features_only'),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            dynvit.create_model('test_ats', **kwargs)
        assert '\n' not in str(e.value)
    with pytest.raises(NotImplementedError, match='budget=1.0'):
        model.forward_intermediates(images(1))
    from dynvit.export import compile_model, to_onnx
    with pytest.raises(ValueError, match='data-dependent shapes'):
        compile_model(model)
    with pytest.raises(ValueError, match='data-dependent shapes'):
        to_onnx(model, 'never_written.onnx')


def test_gradient_checkpointing_any_image_size_and_bf16():
    model = make('reg_ls_qknorm_avg').train()
    x = images(2)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        model(x).logsumexp(1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    model = dynvit.create_model('test_ats', dynamic_img_size=True).eval()
    with torch.no_grad():
        _, aux = model(images(2, 48), return_aux=True)
        assert aux.num_patches == 144 and aux.num_points == (math.ceil(0.6 * 144),) * 3
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(images(2))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# ---- a plain timm ViT ----

def test_apply_on_a_plain_timm_vit_equals_the_registered_model():
    vit = plain_vit()
    registered = dynvit.create_model('test_ats').eval()
    registered.load_state_dict(vit.state_dict())
    x = images(3)
    with torch.no_grad():
        dense = vit(x)
        model = dynvit.apply(vit, 'ats', budget=0.6)
        assert model is vit and isinstance(model, ats.ATSViT) and model.ats_blocks == (1, 2, 3)
        torch.testing.assert_close(model(x), registered(x), rtol=0, atol=0)
        torch.testing.assert_close(model.set_sparsity(budget=1.0)(x), dense, rtol=0, atol=0)
    cases = [
        (torch.nn.Linear(3, 3), 'is not a timm VisionTransformer'),
        (timm.create_model('deit_tiny_distilled_patch16_224', img_size=32, patch_size=4, depth=2), 'overrides'),
        (plain_vit(class_token=False, global_pool='avg'), 'has none'),
        (plain_vit(block_fn=timm.models.vision_transformer.ParallelScalingBlock), 'timm Block'),
        (dynvit.create_model('test_evit'), 'already a dynvit token model'),
        (plain_vit(), r'\(0, 1\]'),
    ]
    for vit, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            dynvit.apply(vit, 'ats', budget=2.0)
        assert '\n' not in str(e.value)
    assert type(cases[-1][0]) is timm.models.VisionTransformer  # a refused setting leaves the model as it was


def test_dense_checkpoints_and_the_released_layout_load(tmp_path):
    from safetensors.torch import save_file
    deit = plain_vit()
    path = str(tmp_path / 'deit.safetensors')
    save_file(deit.state_dict(), path)
    model = dynvit.create_model('test_ats', budget=1.0, pretrained=True,
                                pretrained_cfg_overlay=dict(file=path, num_classes=10)).eval()
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), deit(x), rtol=0, atol=0)
    released = {**deit.state_dict(), **{f'blocks.{i}.attn.out_zero_mask': torch.zeros(1, 32) for i in (1, 2, 3)}}
    model.load_state_dict(ats.checkpoint_filter_fn({'model': released}, model))
    save_file(plain_vit(depth=3).state_dict(), path)
    with pytest.raises(ValueError, match='missing: blocks.3'):
        dynvit.create_model('test_ats', pretrained=True, pretrained_cfg_overlay=dict(file=path))


# ---- training and the command line ----

def test_fine_tuning_through_the_trainer_lowers_the_loss():
    torch.manual_seed(0)
    model = dynvit.create_model('test_ats', num_classes=3, budget=0.5)
    config = TrainConfig(epochs=3, batch_size=8, lr=5e-3, warmup_epochs=0.5, sparsity_start=1.0,
                         sparsity_warmup_epochs=2)
    history = Trainer(model, Colours(), None, config, progress=False).fit()
    assert history[-1]['train_loss'] < history[0]['train_loss']
    assert history[-1]['train_sparsity'] == [0.5] and model.budget == (0.5,) * 3
    assert history[0]['train_keep_rate'] > history[-1]['train_keep_rate']


def test_command_line_predict_and_info(tmp_path):
    rng = np.random.default_rng(0)
    for name in ('a.png', 'b.png'):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    r = run_cli('predict', 'test_ats', tmp_path, '--budget', '0.3', '--json')
    assert r.returncode == 0, r.stderr
    preds = json.loads(r.stdout)['predictions']
    for pred in preds:
        assert len(pred['kept']) == 3 and max(pred['kept']) <= 20 and 0 < pred['macs'] < pred['dense_macs']
    r = run_cli('info', 'test_ats', '--budget', '0.3', '--json')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['sparsity'] == dict(ats_blocks=[1, 2, 3], budget=[0.3, 0.3, 0.3])

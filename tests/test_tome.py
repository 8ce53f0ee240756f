"""ToMe: the official outputs, the dense limit, batch vs single images, gradients, MACs against
torch's FLOP counter, settings and errors, ``dynvit.apply`` on a plain timm ViT, the command line."""
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import dynvit
from dynvit.models.tome import ToMeVisionTransformer, parse_r
from dynvit.runtime import count_flops

from helpers import dense_twin, images, make_spec, run_cli
from numerics import assert_matches, assert_rounding_close, rounding_tolerance

FIXTURES = Path(__file__).parent / 'fixtures' / 'official'

# (registered test variant, extra kwargs): class token with proportional attention; register token,
# average pooling, LayerScale, qk-norm, conv stem and the decreasing schedule; no prefix token at all
# (max pooling); explicit (unfused) attention
SPECS = {
    'cls': ('test_tome', dict()),
    'reg_avg_sched': ('test_tome2', dict()),
    'no_prefix_maxpool': ('test_tome', dict(class_token=False, global_pool='max', r=[10, 6, 4])),
    'explicit_attention_regs': ('test_tome', dict(fused=False, reg_tokens=2, r=12)),
    'protected_regs_weighted_avg': ('test_tome', dict(reg_tokens=3, global_pool='avg', protect_registers=True,
                                                      weighted_pool=True, r=(6, 1))),
}


def make(spec, **kwargs):
    return make_spec(SPECS, spec, **kwargs)


def _official(name):
    meta = json.loads((FIXTURES / f'{name}.json').read_text())
    tensors = load_file(str(FIXTURES / f'{name}.safetensors'))
    patch = meta['patch']
    model = ToMeVisionTransformer(**meta['constructor_kwargs'], r=patch['model.r'], prop_attn=patch['prop_attn']).eval()
    model.load_state_dict({k[len('state_dict.'):]: v for k, v in tensors.items() if k.startswith('state_dict.')})
    return model, tensors, meta


@pytest.mark.numerics
@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('name', ['tome_tiny_a', 'tome_tiny_a_sched'])
def test_matches_official_eval_output(name, fused):
    model, t, meta = _official(name)
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    with torch.no_grad():
        out, aux = model(t['input'], return_aux=True)
    assert aux.tokens_per_block[0].tolist() == meta['tokens_into_each_block_incl_cls']
    merged = [i for i, m in enumerate(aux.matches) if m is not None]
    assert merged == sorted(int(k.split('.')[1][5:]) for k in t if k.endswith('.src_idx'))
    decisions = [(aux.size, t['aux.size'][..., 0]), (aux.source, t['aux.source'])]
    for i in merged:
        decisions += [(getattr(aux.matches[i], ours), t[f'aux.block{i}.{theirs}'])
                      for ours, theirs in (('unmerged', 'unm_idx'), ('src', 'src_idx'), ('dst', 'dst_idx'))]
    # the official logits up to rounding, every merge exactly (the fixtures' matching margins are >= 7e-5)
    assert assert_matches(model, t['input'], out, t['output'], name, decisions).all()


def test_parse_r_follows_the_released_schedules():
    assert parse_r(8, 4) == (8, 8, 8, 8)
    assert parse_r([0, 16, 12], 5) == (0, 16, 12, 0, 0)
    assert parse_r(16, 12, inflect=-1) == (32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2, 0)
    assert parse_r(4, 5, inflect=1) == (0, 2, 4, 6, 8)
    assert parse_r(5, 4, inflect=0.5) == (2, 4, 6, 8)  # int(r * (1 - inflect)) up to 2r minus that, truncated


@pytest.mark.parametrize('spec', list(SPECS))
def test_r_zero_is_the_dense_timm_model(spec):
    model = make(spec, r=0)
    dense = dense_twin(model)
    x = images(3)
    with torch.no_grad():
        out, aux = model(x, return_aux=True)
        torch.testing.assert_close(out, dense(x), rtol=0, atol=0)
    assert (aux.tokens_per_block == 64 + model.num_prefix_tokens).all() and aux.kept.shape == (3, 0)
    assert aux.macs.tolist() == [aux.dense_macs] * 3 and (aux.keep_rate == 1).all()


@pytest.mark.parametrize('spec', list(SPECS))
def test_batch_equals_single_images(spec):
    model = make(spec)
    x = images(4)
    with torch.no_grad():
        out, aux = model(x, return_aux=True)
        singles = [model(x[b:b + 1], return_aux=True) for b in range(4)]
    # a batch rounds differently from one image: logits up to rounding, merges exact unless at a tie
    assert_matches(model, x, torch.cat([one for one, _ in singles]), out, 'single images',
                   [(torch.cat([a.token_of for _, a in singles]), aux.token_of),
                    (torch.cat([a.size for _, a in singles]), aux.size)])
    assert aux.tokens_per_block.unique(dim=0).shape[0] == 1  # the same r for every image: a dense batch


@pytest.mark.parametrize('spec', list(SPECS))
def test_every_parameter_gets_a_gradient_in_training(spec):
    model = make(spec, drop_path_rate=0.1).train()
    logits, aux = model(images(2), return_aux=True)
    assert aux.merged_per_block.sum() > 0
    loss, parts = model.training_objective(dynvit.losses.ObjectiveConfig())(logits, aux, torch.tensor([0, 1]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing and set(parts) == {'ce'}


@pytest.mark.parametrize('spec', list(SPECS))
def test_macs_equal_torch_flop_counter(spec):
    model = make(spec)
    x = images(1)
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
    assert aux.merged_per_block.sum() > 0 and aux.macs[0] < aux.dense_macs
    assert count_flops(model, x) == 2 * aux.macs[0]


@pytest.mark.parametrize('spec', list(SPECS))
def test_aux_describes_the_merged_groups(spec):
    model = make(spec)
    with torch.no_grad():
        _, aux = model(images(2), return_aux=True)
    P, Q = model.num_prefix_tokens, aux.num_protected
    # every original token is in exactly one output token; sizes count them
    assert torch.equal(aux.source.sum(2), aux.size) and torch.equal(aux.source.sum(1), torch.ones(2, P + 64))
    assert (aux.token_of[:, :Q] == torch.arange(Q)).all() and (aux.token_groups >= Q).all()
    # a stage is a merging block; its kept patches are the tokens left after it (registers merge
    # like patches unless protected)
    after = aux.tokens_per_block - aux.merged_per_block
    left = [[int(after[0, i]) - P for i in aux.merge_blocks]] * 2
    assert aux.kept.tolist() == left if Q == P else (aux.kept >= torch.tensor(left)).all()
    assert aux.grid == (8, 8) and torch.equal(aux.keep_rate, aux.kept[:, -1] / 64)
    # a kept patch stands as its own output token: the token it ended in is not shared with another kept patch
    for b in range(2):
        groups = aux.token_groups[b][aux.kept_masks[-1][b]]
        assert groups.unique().numel() == groups.numel()


@pytest.mark.parametrize('weighted', [False, True])
def test_average_pooling_plain_or_weighted_by_size(weighted):
    model = make('protected_regs_weighted_avg', weighted_pool=weighted)
    x = images(2)
    with torch.no_grad():
        logits = model(x)
        feats, aux = model.forward_features(x, return_aux=True)
    P = model.num_prefix_tokens
    w = aux.size[:, P:, None] if weighted else torch.ones_like(aux.size[:, P:, None])
    assert_rounding_close(model, logits, model.head(model.fc_norm((feats[:, P:] * w).sum(1) / w.sum(1))))
    assert aux.size[:, P:].sum(1).tolist() == [64.0, 64.0]  # registers protected: the patches hold all patches


def test_settings_change_on_a_built_model_and_round_trip(tmp_path):
    model = make('cls')
    x = images(2)
    with torch.no_grad():
        model.set_sparsity(r=4)
        assert model(x, return_aux=True)[1].tokens_per_block[0].tolist() == [65, 61, 57, 53]
        model.set_sparsity(r=(16, -1))  # the released code's (r, inflect)
        assert model.r_per_block == (32, 21, 10, 0) and model.sparsity_config() == dict(
            r=16, inflect=-1.0, prop_attn=True, protect_registers=False, weighted_pool=False)
        # a block merges at most half of its unprotected tokens, as the released code clamps
        assert model(x, return_aux=True)[1].merged_per_block[0].tolist() == [32, 16, 8, 0]
        model.set_sparsity(r=[6, 2])
        assert model.r_per_block == (6, 2, 0, 0) and model.inflect == 0.0
    # the training schedule's level: 1.0 is dense, r = round((1 - level) * N)
    assert model.set_sparsity_level((1.0,)).r == 0 and model.set_sparsity_level((0.9375,)).r == 4
    assert model.sparsity_level == (0.9375,) and model.set_sparsity(r=[4, 2]).sparsity_level == (0.9375, 1 - 2 / 64, 1, 1)
    model.set_sparsity(r=12, inflect=-0.5, prop_attn=False, weighted_pool=True)
    path = str(tmp_path / 'tome.safetensors')
    dynvit.save_model(model, path)
    loaded = dynvit.load_model(path).eval()
    assert loaded.sparsity_config() == model.sparsity_config()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(NotImplementedError, match='r=0'):
        model.forward_intermediates(x)


@pytest.mark.parametrize('settings,match', [
    (dict(r=33), 'too large.*use r <= 32'),
    (dict(r=[4, 40]), 'too large'),
    (dict(r=-1), '>= 0'),
    (dict(r=[4, -2]), '>= 0'),
    (dict(r=2.5), 'whole number'),
    (dict(r=[1, 1, 1, 1, 1]), '5 values for 4 blocks'),
    (dict(r='8'), 'must be an int'),
    (dict(r=8, inflect=2), r'\[-1, 1\]'),
    (dict(r=[4, 4], inflect=-1), 'used as given'),
    (dict(r=(8, -1), inflect=0.5), 'not both'),
    (dict(r=(8, -1, 2)), 'tuple'),
    (dict(prop_attn='yes'), 'True or False'),
    (dict(protect_registers=1), 'protect_registers must be True or False'),
])
def test_bad_settings_raise_one_line_errors(settings, match):
    model = make('cls')
    before = model.sparsity_config()
    with pytest.raises(ValueError, match=match) as e:
        model.set_sparsity(**settings)
    assert '\n' not in str(e.value) and model.sparsity_config() == before
    with pytest.raises(ValueError, match=match):
        dynvit.create_model('test_tome', **settings)


def _plain_vit():
    torch.manual_seed(0)
    return timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=10).eval()


def test_apply_on_a_plain_timm_vit_equals_the_registered_model():
    vit = _plain_vit()
    weights = {k: v.data_ptr() for k, v in vit.state_dict().items()}
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        dense = vit(x)
        model = dynvit.apply(vit, 'tome', r=13)
        assert model is vit and isinstance(model, dynvit.DynamicModel)
        assert {k: v.data_ptr() for k, v in model.state_dict().items()} == weights  # nothing copied
        ours, aux = model(x, return_aux=True)
        registered = dynvit.create_model('tome_tiny_patch16_224', num_classes=10, r=13).eval()
        registered.load_state_dict(vit.state_dict())
        torch.testing.assert_close(registered(x), ours, rtol=0, atol=0)
        assert aux.tokens_per_block[0].tolist() == [197 - 13 * i for i in range(12)]
        torch.testing.assert_close(model.set_sparsity(r=0)(x), dense, rtol=0, atol=0)


def test_apply_refuses_what_it_cannot_handle():
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer
    small = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    cases = [
        (torch.nn.Linear(3, 3), 'is not a timm VisionTransformer'),
        (VisionTransformerDistilled(**small), 'overrides'),
        (VisionTransformer(**small, global_pool='map'), 'attention pooling'),
        (VisionTransformer(**small, block_fn=timm.models.vision_transformer.ParallelScalingBlock), 'timm Block'),
        (dynvit.create_model('test_evovit'), 'already a dynvit token model'),
        (VisionTransformer(**small), 'too large'),
    ]
    for model, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            dynvit.apply(model, 'tome', r=40)
        assert '\n' not in str(e.value)
    assert type(cases[-1][0]) is VisionTransformer  # a refused setting leaves the model as it was
    with pytest.raises(ValueError, match="unknown method 'nope'; known: " + ', '.join(dynvit.models.list_methods())):
        dynvit.apply(cases[-1][0], 'nope')
    converted = dynvit.apply(VisionTransformer(**small), 'tome', r=2)
    with pytest.raises(TypeError, match='converted from a built model, so its constructor arguments are unknown'):
        dynvit.save_model(converted, 'unused.safetensors')


def test_command_line_info_and_predict(tmp_path):
    from PIL import Image
    image = tmp_path / 'a.png'
    Image.new('RGB', (40, 40), (200, 30, 30)).save(image)
    r = run_cli('info', 'test_tome', '--merge-r', '4', '--json')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    r = run_cli('predict', 'test_tome', image, '--merge-r', '6,4', '--json', '--topk', '2')
    assert r.returncode == 0, r.stderr
    pred = json.loads(r.stdout)
    assert info['family'] == 'ToMe' and info['sparsity_knob'] == 'r' and info['sparsity']['r'] == 4
    assert 0 < info['saved_fraction'] < 1
    p = pred['predictions'][0]
    assert p['kept'] == [58, 54] and p['out_of'] == [64, 64] and len(p['topk']) == 2


def test_gradient_checkpointing_gives_the_same_gradients():
    x, y = images(2), torch.tensor([0, 1])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = make('reg_avg_sched').train()
        model.set_grad_checkpointing(checkpointing)
        logits, aux = model(x, return_aux=True)
        model.training_objective(dynvit.losses.ObjectiveConfig())(logits, aux, y)[0].backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        assert torch.equal(grads[1][n], g), n  # checkpointing recomputes the same forward with the same kernels


def test_dense_timm_checkpoints_load_directly(tmp_path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
                            num_classes=10).eval()
    state = dict(vit.state_dict())
    path = str(tmp_path / 'deit_like.safetensors')
    save_file({**state, 'score_predictor.0.in_conv.0.weight': torch.zeros(3)}, path)  # a DynamicViT file's extra
    model = dynvit.create_model('test_tome', pretrained=True, pretrained_cfg_overlay=dict(file=path)).eval()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), dynvit.apply(vit, 'tome', r=8)(x), rtol=0, atol=0)
    save_file({k: v for k, v in state.items() if not k.startswith('blocks.3.')}, path)
    with pytest.raises(ValueError, match='missing: blocks.3'):
        dynvit.create_model('test_tome', pretrained=True, pretrained_cfg_overlay=dict(file=path))


def test_any_image_size_and_bf16_autocast():
    model = make('cls', dynamic_img_size=True, r=[8, 0, 8, 0])
    x = images(2)
    with torch.no_grad():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low, aux = model(x, return_aux=True)
        full = model(x)
        torch.testing.assert_close(low.float(), full, rtol=0, atol=rounding_tolerance(model, full.bfloat16()))
        _, aux = model(torch.randn(2, 3, 48, 40), return_aux=True)
    assert aux.grid == (12, 10) and aux.tokens_per_block[0].tolist() == [121, 113, 113, 105]
    assert aux.token_groups.shape == (2, 120) and aux.kept_masks[0].shape == (2, 120)

"""Our eval paths reproduce the official DynamicViT and Evo-ViT implementations' outputs, and the
full-size official key layouts map completely onto our models."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dynvit
from dynvit.models import evo_vit
from dynvit.models.dynamic_vit import DynamicVisionTransformer, checkpoint_filter_fn

FIXTURES = Path(__file__).parent / 'fixtures' / 'official'


def _load(name, token_order):
    meta = json.loads((FIXTURES / f'{name}.json').read_text())
    tensors = load_file(str(FIXTURES / f'{name}.safetensors'))
    kw = meta['constructor_kwargs']
    model = DynamicVisionTransformer(
        img_size=kw['img_size'], patch_size=kw['patch_size'], embed_dim=kw['embed_dim'], depth=kw['depth'],
        num_heads=kw['num_heads'], mlp_ratio=kw['mlp_ratio'], qkv_bias=kw['qkv_bias'], num_classes=kw['num_classes'],
        prune_loc=kw['pruning_loc'], keep_ratio=kw['token_ratio'], token_order=token_order).eval()
    state = {k[len('state_dict.'):]: v for k, v in tensors.items() if k.startswith('state_dict.')}
    model.load_state_dict(checkpoint_filter_fn(state, model))
    return model, tensors, meta


@pytest.mark.parametrize('token_order', ['score', 'position'])
def test_matches_official_eval_output(token_order):
    model, t, meta = _load('dynamicvit_tiny_a_sep', token_order)
    with torch.no_grad():
        out, aux = model(t['input'], return_aux=True)
    assert (out - t['output']).abs().max() < 1e-4
    assert aux.tokens_per_block[0].tolist() == meta['tokens_into_each_block_incl_cls']
    for s in range(3):
        official = t[f'aux.stage{s}.keep_idx_orig_patch'].sort(dim=1).values
        ours = aux.decisions[s].nonzero()[:, 1].view(official.shape[0], -1)
        assert torch.equal(ours, official)


def test_matches_official_without_separated_scores():
    """Scores at the keep boundary differ by ~1e-7 here, so one boundary token may differ: looser check."""
    model, t, meta = _load('dynamicvit_tiny_a', 'score')
    with torch.no_grad():
        out, aux = model(t['input'], return_aux=True)
    assert aux.tokens_per_block[0].tolist() == meta['tokens_into_each_block_incl_cls']
    assert (out - t['output']).abs().max() < 1e-2


def _load_evo(name):
    meta = json.loads((FIXTURES / f'{name}.json').read_text())
    tensors = load_file(str(FIXTURES / f'{name}.safetensors'))
    kw = meta['constructor_kwargs']
    # the released schedule: t = 1 then 0.5 from block 4; half of the patches before blocks 4 and 8
    assert kw['tradeoff'] == [1] * 4 + [0.5] * 8 and kw['prune_ratio'] == [1] * 4 + [0.5] * 8
    model = dynvit.create_model(
        'evovit_small_patch16_224', img_size=kw['img_size'], patch_size=kw['patch_size'], embed_dim=kw['embed_dim'],
        depth=kw['depth'], num_heads=kw['num_heads'], mlp_ratio=kw['mlp_ratio'], num_classes=kw['num_classes'],
        select_loc=(4, 8), keep_ratio=0.5, tradeoff=0.5, representative_token=False).eval()
    state = {k[len('state_dict.'):]: v for k, v in tensors.items() if k.startswith('state_dict.')}
    model.load_state_dict(evo_vit.checkpoint_filter_fn({'model': state}, model))
    return model, tensors, meta


@pytest.mark.parametrize('name,atol', [('evovit_tiny_a_sep', 1e-5), ('evovit_tiny_a', 1e-4)])
def test_evovit_matches_official_eval_output(name, atol):
    model, t, meta = _load_evo(name)
    with torch.no_grad():
        out, aux = model(t['input'], return_aux=True)
    assert (out - t['output']).abs().max() < atol
    assert aux.tokens_per_block[0].tolist() == meta['tokens_into_each_block_attention_incl_cls']
    assert aux.kept_tokens[0].tolist() == [s['num_keep_spatial'] for s in meta['pruning_stages']]


@pytest.mark.parametrize('size,width', [('tiny', 192), ('small', 384), ('base', 768)])
def test_official_evovit_layout_maps_completely(size, width):
    """The released DeiT-S checkpoint's keys (manifest), scaled to each width, load with nothing
    missing or left over; norm/head go to the pooled-feature head, head_cls/norm_cls are kept."""
    manifest = json.loads((FIXTURES / 'manifest_evovit_deit_small.json').read_text())
    state = {e['key']: torch.zeros([d // 384 * width if d in (384, 768, 1152, 1536) else d for d in e['shape']])
             for e in manifest['state_dict']}
    model = dynvit.create_model(f'evovit_{size}_patch16_224', representative_token=False)
    filtered = evo_vit.checkpoint_filter_fn({'model': state}, model)
    result = model.load_state_dict(filtered, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(filtered) == set(model.state_dict())

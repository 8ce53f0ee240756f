"""Our eval paths reproduce the official DynamicViT and Evo-ViT implementations' outputs, and the
full-size official key layouts map completely onto our models (EViT's outputs: ``test_evit.py``)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dynvit
from dynvit.models import evo_vit
from dynvit.models.dynamic_vit import DynamicVisionTransformer, checkpoint_filter_fn

from helpers import run_cli
from numerics import assert_matches, rounding_tolerance

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


@pytest.mark.numerics
@pytest.mark.parametrize('name,token_order', [('dynamicvit_tiny_a_sep', 'score'), ('dynamicvit_tiny_a_sep', 'position'),
                                              ('dynamicvit_tiny_a', 'score')])
def test_matches_official_eval_output(name, token_order):
    """The official logits up to rounding and the same kept patches; in the plain fixture two scores at
    the keep boundary differ by ~1e-7, so an image whose decision rounds the other way is reported."""
    model, t, meta = _load(name, token_order)
    with torch.no_grad():
        out, aux = model(t['input'], return_aux=True)
    assert aux.tokens_per_block[0].tolist() == meta['tokens_into_each_block_incl_cls']
    kept = []
    for s in range(3):
        official = t[f'aux.stage{s}.keep_idx_orig_patch'].sort(dim=1).values
        kept.append((aux.decisions[s].nonzero()[:, 1].view(official.shape[0], -1), official))
    compared = assert_matches(model, t['input'], out, t['output'], name, kept)
    assert name.endswith('_a') or compared.all()


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


@pytest.mark.numerics
@pytest.mark.parametrize('name', ['evovit_tiny_a_sep', 'evovit_tiny_a'])
def test_evovit_matches_official_eval_output(name):
    model, t, meta = _load_evo(name)
    with torch.no_grad():
        out, aux = model(t['input'], return_aux=True)
    assert_matches(model, t['input'], out, t['output'], name)
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


@pytest.mark.parametrize('name,width', [('dynamicvit_tiny_patch16_224', 192),
                                        ('dynamicvit_256_patch16_224.official_r07_in1k', 256),
                                        ('dynamicvit_small_patch16_224.official_r07_in1k', 384),
                                        ('dynamicvit_base_patch16_224.official_r07_in1k', 768)])
def test_official_dynamicvit_layout_maps_completely(name, width):
    """The released DeiT-S DynamicViT checkpoint's keys (manifest), scaled to each width, load with
    nothing missing or left over."""
    manifest = json.loads((FIXTURES / 'manifest_dynamicvit_deit_small.json').read_text())
    scale = {384: width, 768: 2 * width, 1152: 3 * width, 1536: 4 * width, 192: width // 2, 96: width // 4}
    state = {e['key']: torch.zeros([scale.get(d, d) for d in e['shape']]) for e in manifest['state_dict']}
    model = dynvit.create_model(name)
    filtered = checkpoint_filter_fn({'model': state}, model)
    result = model.load_state_dict(filtered, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def _official_pth(name, path, ema_noise=True):
    """The fixture's official state dict as the official training scripts save it: ckpt['model'],
    plus an EMA copy (which the official eval does not use) and bookkeeping."""
    tensors = load_file(str(FIXTURES / f'{name}.safetensors'))
    state = {k[len('state_dict.'):]: v for k, v in tensors.items() if k.startswith('state_dict.')}
    ema = {k: v + 0.1 for k, v in state.items()} if ema_noise else state
    torch.save({'model': state, 'model_ema': ema, 'epoch': 29}, path)
    return tensors


_TINY = {'dynamicvit_tiny_a_sep': ('dynamicvit_small_patch16_224.official_r07_in1k',
                                   {'embed_dim': 64, 'num_heads': 2, 'num_classes': 10}),
         'evovit_tiny_a_sep': ('evovit_small_patch16_224.official_in1k',
                               {'embed_dim': 64, 'num_heads': 2, 'num_classes': 10}),
         'evit_tiny_a_sep': ('evit_small_patch16_224.official_fuse_kr07_in1k',
                             {'embed_dim': 64, 'num_heads': 2, 'num_classes': 10})}


@pytest.mark.parametrize('fixture', list(_TINY))
def test_convert_command_then_load_reproduces_the_official_output(fixture, tmp_path):
    """`dynvit convert` with the official tag (its sparsity settings and eval behaviour), then
    create_model(tag, pretrained=True, file=...) offline: the official logits up to rounding."""
    name, args = _TINY[fixture]
    t = _official_pth(fixture, tmp_path / 'official.pth')
    out = tmp_path / 'converted.safetensors'
    r = run_cli('convert', str(tmp_path / 'official.pth'), str(out), '--model', name,
                '--model-args', json.dumps(args))
    assert r.returncode == 0, r.stderr
    model = dynvit.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out))).eval()
    with torch.no_grad():
        assert (model(t['input']) - t['output']).abs().max() <= rounding_tolerance(model, t['output'])
    again = dynvit.load_model(str(out)).eval()
    assert again.sparsity_config() == model.sparsity_config()


def test_convert_refuses_a_file_of_another_layout(tmp_path):
    torch.save({'model': {'features.0.weight': torch.zeros(3, 3)}}, tmp_path / 'other.pth')
    r = run_cli('convert', str(tmp_path / 'other.pth'), str(tmp_path / 'x.safetensors'), '--model',
                'dynamicvit_small_patch16_224.official_r07_in1k')
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and 'does not match' in r.stderr
    assert not (tmp_path / 'x.safetensors').exists()


def test_share_link_download_goes_to_the_hub_cache(tmp_path):
    """Official links name no file (Tsinghua Cloud '.../?dl=1', Google Drive 'uc?id='): they are
    fetched once into torch's hub cache as <arch>.<tag>.pth, then loaded (here from a file:// URL)."""
    t = _official_pth('dynamicvit_tiny_a_sep', tmp_path / 'share')
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    try:
        name, args = _TINY['dynamicvit_tiny_a_sep']
        overlay = dict(url=(tmp_path / 'share').as_uri(), num_classes=10)  # a 10-class stand-in for ImageNet's
        model = dynvit.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **args).eval()
        cached = list((tmp_path / 'hub' / 'checkpoints').glob(f'{name}-*.pth'))
        assert len(cached) == 1
        with torch.no_grad():
            assert (model(t['input']) - t['output']).abs().max() <= rounding_tolerance(model, t['output'])
        (tmp_path / 'share').unlink()  # the second time comes from the cache
        dynvit.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **args)
        # a share service's web page instead of the file: an error naming it, nothing cached
        (tmp_path / 'page').write_text('<!DOCTYPE html><html><body>Google Drive can\'t scan this file</body></html>')
        overlay = dict(url=(tmp_path / 'page').as_uri(), num_classes=10)
        with pytest.raises(OSError, match='returned a web page'):
            dynvit.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **args)
        assert len(list((tmp_path / 'hub' / 'checkpoints').iterdir())) == 1
    finally:
        torch.hub.set_dir(old)


def test_a_files_stored_arguments_win_over_the_tags_presets(tmp_path):
    """A converted file made with other settings than the tag's keeps them when loaded through the tag."""
    name, args = _TINY['dynamicvit_tiny_a_sep']
    _official_pth('dynamicvit_tiny_a_sep', tmp_path / 'official.pth')
    out = tmp_path / 'half.safetensors'
    r = run_cli('convert', str(tmp_path / 'official.pth'), str(out), '--model', name,
                '--model-args', json.dumps({**args, 'keep_ratio': 0.5}))
    assert r.returncode == 0, r.stderr
    model = dynvit.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    assert model.keep_ratio[0] == 0.5 and model.token_order == 'score'
    assert dynvit.create_model(name, keep_ratio=0.6).keep_ratio[0] == 0.6  # the caller's arguments win too
    # refused: a DynamicViT checkpoint as an Evo-ViT, and an output that is not .safetensors
    for model_name, output, message in (('evovit_small_patch16_224.official_in1k', 'x.safetensors', 'keep predictors'),
                                        (name, 'x.pth', 'give a file name ending in .safetensors')):
        r = run_cli('convert', str(tmp_path / 'official.pth'), str(tmp_path / output), '--model', model_name,
                    '--model-args', json.dumps(args))
        assert r.returncode == 1 and message in r.stderr and not (tmp_path / output).exists()

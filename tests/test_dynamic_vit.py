"""DynamicViT behaviour: the three executions agree, keep ratio 1.0 is the dense model,
threshold mode is per-image, dense checkpoints load, bad input is refused clearly."""
import itertools

import pytest
import timm
import torch
from safetensors.torch import save_file

import dynvit

from helpers import BACKBONES, dense_twin, images, make
from numerics import assert_matches, assert_rounding_close

CASES = list(itertools.product(
    ['test_dynamicvit', 'test_dynamicvit2'] + [f'custom:{k}' for k in BACKBONES],
    [True, False],  # fused attention
))


def _build(spec, fused, **kwargs):
    if spec.startswith('custom:'):
        return make('test_dynamicvit', fused_attn=fused, **BACKBONES[spec.split(':')[1]], **kwargs)
    return make(spec, fused_attn=fused, **kwargs)


@pytest.mark.parametrize('spec,fused', CASES)
@pytest.mark.parametrize('batch,keep_ratio', [(1, 0.7), (3, 0.5), (4, (0.9, 0.5, 0.2))])
@pytest.mark.parametrize('token_order', ['position', 'score'])
def test_masked_equals_gathered(spec, fused, batch, keep_ratio, token_order):
    model = _build(spec, fused, token_order=token_order)
    if isinstance(keep_ratio, tuple):
        keep_ratio = keep_ratio[:len(model.prune_loc)]
    model.keep_ratio = keep_ratio
    x = images(batch)
    with torch.no_grad():
        gathered, aux = model(x, return_aux=True)
        masked, aux_m = model(x, decisions=aux.decisions, return_aux=True)
    assert aux.execution == 'gathered' and aux_m.execution == 'masked'
    assert_rounding_close(model, gathered, masked)
    assert torch.equal(aux_m.tokens_per_block, aux.tokens_per_block)
    n = aux.num_patches
    assert aux.kept_tokens.tolist() == [[model.num_keep(s, n) for s in range(len(model.prune_loc))]] * batch


@pytest.mark.parametrize('spec,fused', CASES)
def test_masked_equals_packed(spec, fused):
    model = _build(spec, fused, predictor_scale=30.0, mode='threshold', threshold=0.5)
    x = images(4)
    with torch.no_grad():
        packed, aux = model(x, return_aux=True)
        masked = model(x, decisions=aux.decisions)
    assert aux.execution == 'packed'
    assert_rounding_close(model, packed, masked)


@pytest.mark.parametrize('spec,fused', CASES)
def test_keep_ratio_one_is_the_dense_model(spec, fused):
    model = _build(spec, fused, keep_ratio=1.0)
    dense = dense_twin(model)
    x = images(3)
    with torch.no_grad():
        logits, aux = model(x, return_aux=True)
        assert torch.equal(logits, dense(x))
    assert aux.predictor_tokens.sum() == 0  # no predictor work when nothing can be dropped
    assert model.count_macs(aux).tolist() == [dynvit.runtime.dense_vit_macs(dense, aux.num_patches)] * 3


@pytest.mark.parametrize('spec', ['test_dynamicvit', 'test_dynamicvit2', 'custom:reg_ls_qknorm', 'custom:maxpool'])
def test_threshold_batch_equals_single_images(spec):
    model = _build(spec, True, predictor_scale=30.0, mode='threshold', threshold=0.5)
    x = images(6)
    with torch.no_grad():
        batch_logits, aux = model(x, return_aux=True)
        kept = aux.kept_tokens
        assert len(set(map(tuple, kept.tolist()))) > 1, 'images should keep different numbers of tokens'
        singles = [model(x[i:i + 1], return_aux=True) for i in range(x.shape[0])]
    # a batch rounds differently from one image: logits up to rounding, decisions exact unless at a tie
    assert_matches(model, x, torch.cat([one for one, _ in singles]), batch_logits, 'single images',
                   [(torch.cat([a.kept_tokens for _, a in singles]), kept),
                    (torch.cat([a.decisions[-1] for _, a in singles]), aux.decisions[-1])])


def test_threshold_keeps_what_passes():
    model = make(predictor_scale=30.0, mode='threshold', threshold=(0.3, 0.5, 0.7))
    with torch.no_grad():
        _, aux = model(images(5), return_aux=True)
    prev = torch.ones_like(aux.decisions[0])
    for s, (d, p) in enumerate(zip(aux.decisions, aux.keep_probs)):
        passed = (p >= model.threshold[s]) & (prev > 0)
        forced = (d > 0) & ~passed  # only the best patch of an image where none passed
        assert torch.equal((d > 0) & passed, passed)
        assert (forced.sum(1) <= 1).all() and (~passed.any(1) | ~forced.any(1)).all()
        assert (d <= prev).all()
        prev = d


def test_training_decisions_are_hard_cumulative_and_differentiable():
    model = make('test_dynamicvit').train()
    logits, aux = model(images(3), return_aux=True)
    prev = torch.ones_like(aux.decisions[0])
    for d in aux.decisions:
        assert set(d.unique().tolist()) <= {0.0, 1.0}
        assert (d <= prev).all()
        assert d.requires_grad
        prev = d
    assert aux.execution == 'masked' and aux.features.shape[1] == 1 + aux.num_patches
    # the task loss alone reaches the predictors through the attention mask
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.score_predictor[-1].parameters())


def test_sparsity_changes_without_rebuilding():
    model = make('test_dynamicvit')
    x = images(2)
    with torch.no_grad():
        for ratio in (0.9, 0.5, 0.25):
            model.keep_ratio = ratio
            _, aux = model(x, return_aux=True)
            assert aux.kept_tokens[0].tolist() == [max(1, int(64 * ratio ** (s + 1))) for s in range(3)]
        model.set_sparsity(mode='threshold', threshold=0.0)
        _, aux = model(x, return_aux=True)
        assert aux.kept_tokens.tolist() == [[64, 64, 64]] * 2


def test_forward_features_and_head_compose_like_timm():
    model = make('test_dynamicvit2', mode='threshold', predictor_scale=30.0)  # average pooling, padded tokens
    x = images(3)
    with torch.no_grad():
        feats, aux = model.forward_features(x, return_aux=True)
        assert torch.equal(model.forward_head(feats, token_mask=aux.token_mask), model(x))
        assert model.forward_head(feats, pre_logits=True, token_mask=aux.token_mask).shape == (3, model.embed_dim)


# ---- checkpoints ----
def _dense_file(tmp_path, model_name='test_dynamicvit', **kwargs):
    model = make(model_name, **kwargs)
    dense = dense_twin(model)
    torch.nn.init.normal_(dense.pos_embed)  # differ from any fresh init
    path = tmp_path / 'dense.safetensors'
    save_file(dense.state_dict(), str(path))
    return dense, path


def test_dense_timm_checkpoint_loads_into_backbone(tmp_path):
    dense, path = _dense_file(tmp_path)
    model = dynvit.create_model('test_dynamicvit', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    own = model.state_dict()
    for k, v in dense.state_dict().items():
        assert torch.equal(own[k], v), k
    fresh = [p for n, p in model.named_parameters() if n.startswith('score_predictor.') and p.ndim == 2]
    assert fresh and all(p.std() > 0 for p in fresh)
    model.eval().keep_ratio = 1.0
    x = images(2)
    with torch.no_grad():
        assert torch.equal(model(x), dense(x))


def test_deit_style_pth_checkpoint_loads(tmp_path):
    """DeiT's released files wrap the weights as {'model': state_dict} in a .pth."""
    dense = timm.create_model('deit_tiny_patch16_224', img_size=64)
    path = tmp_path / 'deit.pth'
    torch.save({'model': dense.state_dict(), 'epoch': 300}, path)
    model = dynvit.create_model('dynamicvit_tiny_patch16_224.deit_in1k', pretrained=True, img_size=64,
                                pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.blocks[5].mlp.fc1.weight, dense.blocks[5].mlp.fc1.weight)
    # new number of classes: the classifier is reset the timm way, the backbone still loads
    model = dynvit.create_model('dynamicvit_tiny_patch16_224', pretrained=True, img_size=64, num_classes=5,
                                pretrained_cfg_overlay=dict(file=str(path)))
    assert model.head.out_features == 5
    assert torch.equal(model.cls_token, dense.cls_token)


def test_checkpoint_with_wrong_keys_is_refused(tmp_path):
    dense, path = _dense_file(tmp_path)
    sd = dense.state_dict()
    sd['blocks.0.attn.qkv_weight_renamed'] = sd.pop('blocks.0.attn.qkv.weight')
    save_file(sd, str(path))
    with pytest.raises(ValueError, match=r'missing: blocks\.0\.attn\.qkv\.weight.*unexpected: blocks\.0\.attn\.qkv_weight_renamed'):
        dynvit.create_model('test_dynamicvit', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    other, path2 = _dense_file(tmp_path, embed_dim=48)
    with pytest.raises(ValueError, match='other shapes'):
        dynvit.create_model('test_dynamicvit', pretrained=True, pretrained_cfg_overlay=dict(file=str(path2)))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.safetensors'):
        dynvit.create_model('test_dynamicvit', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'nope.safetensors')))
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'this is not a safetensors file')
    with pytest.raises(ValueError, match='not a readable safetensors file'):
        dynvit.load_model(str(bad))


# ---- bad input ----
def test_bad_inputs_raise_clear_errors():
    model = make('test_dynamicvit')
    with pytest.raises(ValueError, match=r'expected images of size \(32, 32\), got \(48, 48\)'):
        model(images(1, size=48))
    with pytest.raises(ValueError, match='expected 3 input channels, got 1'):
        model(images(1, chans=1))
    with pytest.raises(ValueError, match=r'expected an image batch \[B, C, H, W\]'):
        model(torch.randn(3, 32, 32))
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r'keep_ratio must be in \(0, 1\]'):
            model.keep_ratio = bad
    with pytest.raises(ValueError, match='must not increase'):
        model.keep_ratio = (0.5, 0.7, 0.3)
    with pytest.raises(ValueError, match='3 prune locations'):
        model.keep_ratio = (0.5, 0.3)
    with pytest.raises(ValueError, match=r'keep ratios must be in \(0, 1\]'):
        model.keep_ratio = (0.5, 0.3, 0.0)
    with pytest.raises(ValueError, match=r'keep_ratio must be in \(0, 1\]'):
        dynvit.create_model('test_dynamicvit', keep_ratio=1.2)
    with pytest.raises(ValueError, match="mode must be 'topk' or 'threshold'"):
        model.mode = 'random'
    with pytest.raises(ValueError, match='threshold is a keep probability'):
        model.threshold = 1.5
    with pytest.raises(ValueError, match='prune_loc must be increasing block indices'):
        dynvit.create_model('test_dynamicvit', prune_loc=(1, 7))
    with pytest.raises(ValueError, match='attn_mask and is_causal are not supported'):
        model(images(1), attn_mask=torch.ones(1, 1, 65, 65, dtype=torch.bool))
    with pytest.raises(ValueError, match=r'decisions\[0\] must have shape \(1, 64\)'):
        model(images(1), decisions=[torch.ones(1, 10)] * 3)
    with pytest.raises(NotImplementedError, match='forward_intermediates'):
        model.forward_intermediates(images(1))


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'dynamicvit_smal_patch16_224'.*did you mean dynamicvit_small_patch16_224"):
        dynvit.create_model('dynamicvit_smal_patch16_224')


def test_more_bad_inputs():
    import numpy as np
    model = make('test_dynamicvit')
    with pytest.raises(ValueError, match='empty batch'):
        model(torch.zeros(0, 3, 32, 32))
    with pytest.raises(ValueError, match='floating-point image batch'):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match='0/1 keep decisions'):
        model(images(1), decisions=[torch.full((1, 64), 0.3)] * 3)
    model.keep_ratio = np.float32(0.5)  # numpy and 0-d tensor scalars are numbers too
    assert model.keep_ratio == (0.5, 0.25, 0.125)
    model.threshold = torch.tensor(0.25)
    assert model.threshold == (0.25,) * 3
    direct = dynvit.DynamicVisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2,
                                             prune_loc=(1, 2))
    with pytest.raises(ValueError, match='built directly, not by name'):
        dynvit.save_model(direct, '/tmp/never_written.safetensors')


@pytest.mark.parametrize('mode', ['topk', 'threshold'])
def test_eval_under_bf16_autocast(mode):
    model = make('test_dynamicvit', mode=mode, predictor_scale=30.0)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        logits, aux = model(images(3), return_aux=True)
    assert torch.isfinite(logits.float()).all() and aux.kept_tokens.shape == (3, 3)


def test_checkpoint_path_loads_dense_and_dynvit_files(tmp_path):
    dense = timm.create_model('deit_tiny_patch16_224', img_size=64)
    pth = tmp_path / 'deit.pth'
    torch.save({'model': dense.state_dict()}, pth)
    model = dynvit.create_model('dynamicvit_tiny_patch16_224', img_size=64, checkpoint_path=str(pth))
    assert torch.equal(model.pos_embed, dense.pos_embed)
    saved = tmp_path / 'sparse.safetensors'
    model.keep_ratio = 0.5
    dynvit.save_model(model, str(saved))
    again = dynvit.create_model('dynamicvit_tiny_patch16_224', checkpoint_path=str(saved))
    assert again.keep_ratio == model.keep_ratio and torch.equal(again.score_predictor[0].in_conv[1].weight,
                                                                 model.score_predictor[0].in_conv[1].weight)
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint at all')
    with pytest.raises(ValueError, match='cannot read checkpoint'):
        dynvit.create_model('test_dynamicvit', checkpoint_path=str(garbage))


def test_a_failed_hub_download_gives_a_clear_error(monkeypatch):
    import timm.models._builder as builder

    import dynvit.hub.factory as factory

    def offline(*args, **kwargs):
        raise OSError('We cannot find the requested files in the local cache.\n(more lines)')
    monkeypatch.setattr(factory, 'offline_reason', lambda url: '')  # the network seems there: timm downloads
    monkeypatch.setattr(builder, 'load_state_dict_from_hf', offline)
    with pytest.raises(OSError, match=r'could not fetch the pretrained weights of dynamicvit_tiny_patch16_224\.deit_in1k'
                                      r'.*pretrained_cfg_overlay=dict\(file=PATH\)'):
        dynvit.create_model('dynamicvit_tiny_patch16_224.deit_in1k', pretrained=True, img_size=64)


class _RunsCode:
    def __reduce__(self):
        import os
        return (os.getcwd, ())


def _awkward_file(tmp_path, kind):
    import pickle
    path = tmp_path / ('x.safetensors' if kind in ('empty_st', 'truncated_st') else 'x.pth')
    if kind == 'empty_st' or kind == 'empty_pth':
        path.write_bytes(b'')
    elif kind == 'truncated_st':
        dynvit.save_model(make('test_dynamicvit'), str(path))
        path.write_bytes(path.read_bytes()[:1000])
    elif kind == 'tensor_pth':
        torch.save(torch.zeros(3), path)
    elif kind == 'code_pth':
        path.write_bytes(pickle.dumps({'model': _RunsCode()}))
    elif kind == 'text_pth':
        path.write_text('hello')
    elif kind == 'not_tensors':
        torch.save({'model': {'a': 1, 'b': 'x'}}, path)
    return str(path)


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
@pytest.mark.parametrize('kind', ['empty_st', 'empty_pth', 'truncated_st', 'tensor_pth', 'code_pth', 'text_pth', 'not_tensors'])
def test_awkward_checkpoint_files_give_clear_errors(tmp_path, kind):
    path = _awkward_file(tmp_path, kind)
    match = r'not a readable safetensors file|cannot read checkpoint|does not hold a state dict'
    with pytest.raises(ValueError, match=match):
        dynvit.create_model('test_dynamicvit', pretrained=True, pretrained_cfg_overlay=dict(file=path))
    with pytest.raises(ValueError, match=match):
        dynvit.create_model('test_dynamicvit', checkpoint_path=path)


def test_loaded_overlay_state_dict_is_not_kept_alive(tmp_path):
    path = tmp_path / 'm.safetensors'
    dynvit.save_model(make('test_dynamicvit'), str(path))
    model = dynvit.create_model('test_dynamicvit', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert 'state_dict' not in model.pretrained_cfg and model.pretrained_cfg['file'] == str(path)


@pytest.mark.parametrize('how', ['pretrained', 'checkpoint_path'])
def test_other_input_channels_and_sizes_load_from_a_3_channel_224_checkpoint(tmp_path, how):
    dense = timm.create_model('deit_tiny_patch16_224', img_size=64)
    path = tmp_path / 'deit.safetensors'
    save_file(dense.state_dict(), str(path))
    src = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path))) if how == 'pretrained' \
        else dict(checkpoint_path=str(path))
    gray = dynvit.create_model('dynamicvit_tiny_patch16_224', img_size=64, in_chans=1, **src).eval()
    assert torch.equal(gray.patch_embed.proj.weight[:, 0], dense.patch_embed.proj.weight.sum(1))  # timm sums the same way
    assert gray(torch.randn(2, 1, 64, 64)).shape == (2, 1000)
    big = dynvit.create_model('dynamicvit_tiny_patch16_224', img_size=96, **src).eval()  # pos_embed resampled
    _, aux = big(torch.randn(1, 3, 96, 96), return_aux=True)
    assert aux.num_patches == 36 and aux.kept_tokens[0].tolist() == [25, 17, 12]

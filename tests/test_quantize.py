"""INT8 quantization of the linear layers and fp16 / bf16 storage (dynvit.compress.quantize,
dynvit.save_model(dtype=...)) on every family, and pruned files loaded the timm way."""
import os

import pytest
import torch
import torch.nn as nn

import dynvit
from dynvit.compress import (
    int8_layers,
    is_quantized,
    magnitude_prune,
    prune_attention_heads,
    prune_mlp_units,
    quantize_int8,
)

from helpers import images, randomize_batch_norms

MODELS = ['test_dynamicvit', 'test_evovit', 'test_fbs_resnet', 'test_fbs_efficientnet']
# measured on these random tiny models (5 seeds each): max |int8 - fp32| logit difference over the
# largest |logit| was at most 0.041 (DynamicViT), 0.022 (Evo-ViT), 0.011 (FBS ResNet), 0.017 (FBS
# EfficientNet); per-channel weights, per-batch activations. The bound leaves room for other seeds.
INT8_RELATIVE_BOUND = 0.08


def _model(name, **kwargs):
    torch.manual_seed(0)
    return randomize_batch_norms(dynvit.create_model(name, **kwargs)).eval()


def _macs(model, x):
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
    return aux.macs if hasattr(aux, 'macs') else model.count_macs(aux)


@pytest.mark.parametrize('name', MODELS)
def test_int8_outputs_stay_close_to_fp32(name):
    model = _model(name)
    x = images(8, size=model.pretrained_cfg['input_size'][-1])
    q = quantize_int8(model)
    assert is_quantized(q) and not is_quantized(model)  # a copy; the float model is untouched
    layers = int8_layers(model)
    assert layers and not any('score_predictor' in n or '.gate' in n for n in layers)
    quantized = {n for n, m in q.named_modules() if isinstance(m, torch.ao.nn.quantized.Linear)}
    assert quantized == set(layers)
    with torch.no_grad():
        ref, out = model(x), q(x)
    err = (out - ref).abs().max() / ref.abs().max()
    assert err < INT8_RELATIVE_BOUND, float(err)
    # the MAC accounting still sees the INT8 layers (same products)
    if isinstance(model, (dynvit.FBSResNet, dynvit.FBSEfficientNet)):
        assert torch.equal(_macs(q, x), _macs(model, x))
    else:  # token decisions may differ where int8 features move a score across the cut: compare dense counts
        model.set_sparsity(keep_ratio=1.0)
        q.set_sparsity(keep_ratio=1.0)
        assert torch.equal(torch.as_tensor(_macs(q, x)), torch.as_tensor(_macs(model, x)))


def test_int8_runs_the_skipping_token_paths():
    """DynamicViT at inference gathers the kept tokens (a fixed number, or per image by threshold,
    packed into one sequence); they go through INT8 linears."""
    model = _model('test_dynamicvit')
    q = quantize_int8(model)
    x = images(4)
    for mode in ('topk', 'threshold'):
        model.set_sparsity(mode=mode)
        q.set_sparsity(mode=mode)
        with torch.no_grad():
            ref, out = model(x), q(x)
        assert (out - ref).abs().max() / ref.abs().max() < INT8_RELATIVE_BOUND


def test_int8_refusals():
    model = _model('test_dynamicvit')
    with pytest.raises(ValueError, match='raw weights'):
        quantize_int8(model, include=('default', 'predictor'))
    with pytest.raises(ValueError, match='no nn.Linear'):
        quantize_int8(model, include='nothing_matches')
    magnitude_prune(model, 0.3)
    with pytest.raises(ValueError, match='remove_masks'):
        quantize_int8(model)
    with pytest.raises(ValueError, match='quantize after loading'):
        dynvit.save_model(quantize_int8(_model('test_evovit')), os.devnull)


@pytest.mark.parametrize('dtype, torch_dtype, tol', [('fp16', torch.float16, 2e-3), ('bf16', torch.bfloat16, 3e-2)])
@pytest.mark.parametrize('name', MODELS)
def test_reduced_precision_storage(name, dtype, torch_dtype, tol, tmp_path):
    model = _model(name)
    full, half = tmp_path / 'full.safetensors', tmp_path / f'{dtype}.safetensors'
    dynvit.save_model(model, str(full))
    dynvit.save_model(model, str(half), dtype=dtype)
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    from safetensors import safe_open
    with safe_open(str(half), 'pt') as f:
        assert all(f.get_tensor(k).dtype in (torch_dtype, torch.int64, torch.long) or not f.get_tensor(k).is_floating_point()
                   for k in f.keys())
    loaded = dynvit.load_model(str(half)).eval()
    assert next(loaded.parameters()).dtype == torch.float32  # loaded back into the float model
    x = images(2, size=model.pretrained_cfg['input_size'][-1])
    with torch.no_grad():
        ref = model(x)
        assert (loaded(x) - ref).abs().max() / ref.abs().max() < tol
    with pytest.raises(ValueError, match='dtype must be'):
        dynvit.save_model(model, str(half), dtype='int4')


def test_structurally_pruned_file_loads_by_name_and_fine_tunes_to_new_classes(tmp_path):
    model = _model('test_dynamicvit')
    prune_attention_heads(model, 0.5)
    prune_mlp_units(model, 0.5)
    path = str(tmp_path / 'pruned.safetensors')
    dynvit.save_pruned(model, path)
    x = images(2)
    same = dynvit.create_model('test_dynamicvit', pretrained=True, pretrained_cfg_overlay=dict(file=path)).eval()
    other = dynvit.create_model('test_dynamicvit', pretrained=True, pretrained_cfg_overlay=dict(file=path),
                                num_classes=3).eval()
    with torch.no_grad():
        assert torch.equal(same(x), model(x))  # saved and reloaded: the same weights and kernels
        assert other(x).shape == (2, 3)
    assert [b.attn.num_heads for b in other.blocks] == [b.attn.num_heads for b in model.blocks]
    assert torch.equal(other.blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc1.weight)
    assert isinstance(other.head, nn.Linear) and other.head.out_features == 3

"""Every registered dynvit model: forward in every mode, backward reaches every parameter,
safetensors round trip."""
import pytest
import torch

import dynvit
from dynvit.models._helpers import model_input_size

from helpers import images, is_cnn, randomize_batch_norms, stages, training_loss

MODELS = dynvit.list_models()
# Full-size (224- and 384-px) variants run at 64 px to keep the suite fast (ViTs: 16 patches); the
# geometry is otherwise unchanged.
SMALL = dict(img_size=64)


def _create(name, **kwargs):
    if name.startswith('test_'):
        return dynvit.create_model(name, **kwargs)
    if name.startswith('fbs_'):  # CNNs take any image size
        return dynvit.create_model(name, **kwargs)
    if name.startswith('tome_'):  # a block merges at most half of the 16 patches
        kwargs = dict(r=4, **kwargs)
    if '_base_' in name:  # the same code as the small variants, 12x fewer weights to initialise
        kwargs = dict(embed_dim=64, num_heads=2, **kwargs)
    return dynvit.create_model(name, **(SMALL if name.endswith(('_224', '_384')) else {}), **kwargs)


def _input(model, batch):
    chans = model_input_size(model)[0]  # the zoo's variants default to their 1-channel files
    if is_cnn(model):
        return images(batch, 32 if model.pretrained_cfg['architecture'].startswith('test_') else 64, chans)
    return images(batch, model.patch_embed.img_size[0], chans)


def _expected_kept(model, x):
    if is_cnn(model):
        return model.num_keep()
    if isinstance(model, dynvit.ToMeVisionTransformer):
        return _merged_kept(model)
    return [model.num_keep(s, model.patch_embed.num_patches) for s in range(stages(model))]


def _merged_kept(model):
    """ToMe: the patch tokens left after each merging block (each merges at most half of its patch tokens)."""
    kept, left = [], model.patch_embed.num_patches
    for r in model.r_per_block:
        r = min(r, left // 2)
        if r:
            left -= r
            kept.append(left)
    return kept


def _kept(aux):
    return aux.kept_channels if hasattr(aux, 'kept_channels') else aux.kept_tokens


def _check_kept(model, x, aux):
    """Units kept per stage. EViT keeps ceil(rho n) of its n current tokens, and the fused tokens
    of earlier stages (no patch of their own) may be among them."""
    kept = _kept(aux)
    if not hasattr(model, 'num_keep') and not isinstance(model, dynvit.ToMeVisionTransformer):
        # an adaptive family: each image keeps its own count, at least one and never more than before
        assert ((kept >= 1) & (kept <= aux.kept_total)).all() and (kept[:, 1:] <= kept[:, :-1]).all()
        return
    if not isinstance(model, dynvit.EViT):
        assert kept.tolist() == [_expected_kept(model, x)] * kept.shape[0]
        return
    n = model.patch_embed.num_patches
    for s in range(stages(model)):
        k = min(n, model.num_keep(s, n))
        assert ((k - s <= kept[:, s]) & (kept[:, s] <= k)).all()
        n = k + int(model.fuse_token and k < n)


def test_registry():
    assert {'dynamicvit_tiny_patch16_224', 'dynamicvit_small_patch16_224', 'dynamicvit_base_patch16_224',
            'test_dynamicvit', 'test_dynamicvit2', 'evovit_tiny_patch16_224', 'evovit_small_patch16_224',
            'evovit_base_patch16_224', 'test_evovit', 'test_evovit2', 'evit_tiny_patch16_224', 'evit_small_patch16_224',
            'evit_base_patch16_224', 'test_evit', 'test_evit2', 'tome_tiny_patch16_224', 'tome_small_patch16_224',
            'tome_base_patch16_224', 'test_tome', 'test_tome2', 'fbs_resnet18', 'fbs_resnet34',
            'fbs_efficientnet_lite0', 'test_fbs_resnet', 'test_fbs_resnet2', 'test_fbs_efficientnet'} <= set(MODELS)
    assert {'dynamicvit_small_patch16_224.deit_in1k', 'evovit_small_patch16_224.deit_in1k', 'fbs_resnet18.tv_in1k',
            'evit_small_patch16_224.deit_in1k', 'fbs_efficientnet_lite0.in1k'} <= set(dynvit.list_models(pretrained=True))
    assert dynvit.list_models('dynamicvit_s*') == ['dynamicvit_small_patch16_224']


@pytest.mark.parametrize('name', MODELS)
def test_forward_all_modes(name):
    model = _create(name).eval()
    x = _input(model, 2)
    with torch.no_grad():
        logits, aux = model(x, return_aux=True)
        assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()
        _check_kept(model, x, aux)
        assert torch.equal(model(x), logits)
        for mode in ('threshold',) if hasattr(model, 'mode') else ('loop', 'mask') if is_cnn(model) else ():
            model.set_sparsity(**({'mode': mode} if hasattr(model, 'mode') else {'execution': mode}))
            logits, aux = model(x, return_aux=True)
            assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()
    model.train()
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, model.num_classes) and _kept(aux).shape[0] == 2


@pytest.mark.parametrize('name', MODELS)
def test_backward_reaches_every_parameter(name):
    model = randomize_batch_norms(_create(name)).train()
    x = _input(model, 2)
    logits, aux = model(x, return_aux=True)
    training_loss(model, logits, aux, torch.tensor([0, 1])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f'no/invalid gradient for {no_grad}'
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f'zero gradient for {zero}'


# sparsity settings other than the defaults, per family
OTHER_SETTINGS = {
    dynvit.DynamicVisionTransformer: dict(keep_ratio=0.5, mode='threshold', threshold=0.4),
    dynvit.EvoVisionTransformer: dict(keep_ratio=0.4, tradeoff=0.8, representative_token=False),
    dynvit.ToMeVisionTransformer: dict(r=[3, 2, 1], prop_attn=False),
    dynvit.EViT: dict(keep_ratio=(0.5, 0.4), drop_loc=(1, 3), fuse_token=False),
    dynvit.FBSResNet: dict(density=0.3, execution='loop'),
    dynvit.FBSEfficientNet: dict(density=0.7, execution='grouped'),
}


@pytest.mark.parametrize('name', MODELS)
def test_safetensors_roundtrip(name, tmp_path):
    model = randomize_batch_norms(_create(name, num_classes=7)).eval()
    if type(model) in OTHER_SETTINGS:
        model.set_sparsity(**OTHER_SETTINGS[type(model)])
    else:  # a family not listed: its knob at level 0.5
        model.set_sparsity_level((0.5,))
    path = tmp_path / 'model.safetensors'
    dynvit.save_model(model, str(path), extra={'note': 'roundtrip'})
    meta = dynvit.read_dynvit_metadata(str(path))
    for k, v in model.sparsity_config().items():
        assert meta['model_args'][k] == v
    assert meta['extra'] == {'note': 'roundtrip'}

    loaded = dynvit.load_model(str(path)).eval()
    assert loaded.sparsity_config() == model.sparsity_config()
    assert loaded.num_classes == 7
    x = _input(model, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # the timm way: pretrained file overlay; the stored sparsity config comes along
    again = dynvit.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert again.sparsity_config() == model.sparsity_config()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize('order', ['dynvit first', 'timm first'])
def test_importing_dynvit_registers_its_models_in_timm(order):
    """Like a timm plugin: after ``import dynvit`` (before or after timm), ``timm.create_model`` knows every
    dynvit architecture; ``import dynvit`` alone imports neither torch nor timm."""
    import subprocess
    import sys
    first, second = ('dynvit', 'timm') if order == 'dynvit first' else ('timm', 'dynvit')
    code = (f'import sys\nimport {first}\n'
            + ('assert "torch" not in sys.modules\n' if first == 'dynvit' else '')
            + f'import {second}\nimport dynvit, timm\n'
            'assert set(dynvit.list_models()) <= set(timm.list_models())\n'
            'print(type(timm.create_model("test_dynamicvit")).__name__)')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == 'DynamicVisionTransformer', r.stderr


def _without_sparse_modules(model):
    """The model's state dict less its keep predictors / gates: a dense checkpoint of its backbone."""
    sparse = {id(t) for m in model.sparse_modules() for t in (*m.parameters(), *m.buffers())}
    return {k: v.detach() for k, v in model.state_dict(keep_vars=True).items() if id(v) not in sparse}


@pytest.mark.parametrize('name', ['test_dynamicvit', 'test_evovit', 'test_fbs_resnet', 'test_fbs_efficientnet'])
def test_untrained_predictors_and_gates_say_so(name, tmp_path):
    """A new model, one started from a dense checkpoint, and a file saved from either are flagged; weights
    that hold the predictors / gates, and a file saved once they learned, are not; Evo-ViT's rule never is."""
    from safetensors.torch import save_file
    model = dynvit.create_model(name)
    learned = bool(model.sparse_modules())
    assert model.untrained_sparse == ('newly initialised' if learned else None)
    dense, full = tmp_path / 'dense.safetensors', tmp_path / 'full.safetensors'
    save_file(_without_sparse_modules(model), str(dense))
    save_file({k: v.detach() for k, v in model.state_dict().items()}, str(full))
    started = dynvit.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(dense)))
    from_dense = 'started from a dense checkpoint' if learned else None
    assert started.untrained_sparse == from_dense
    assert dynvit.create_model(name, checkpoint_path=str(dense)).untrained_sparse == from_dense
    assert dynvit.create_model(name, checkpoint_path=str(full)).untrained_sparse is None  # tensors alone: trained
    dynvit.save_model(started, str(tmp_path / 'started.safetensors'))  # saved before training: the file says so
    assert dynvit.load_model(str(tmp_path / 'started.safetensors')).untrained_sparse == from_dense
    again = dynvit.create_model(name, pretrained=True, checkpoint_path=str(tmp_path / 'started.safetensors'),
                                pretrained_cfg_overlay=dict(file=str(full)))
    assert again.untrained_sparse == from_dense  # the weights loaded last speak
    started.untrained_sparse = None  # as the trainer leaves it once they learned
    dynvit.save_model(started, str(tmp_path / 'trained.safetensors'))
    assert dynvit.load_model(str(tmp_path / 'trained.safetensors')).untrained_sparse is None

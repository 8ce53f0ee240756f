"""Every registered dynvit model: forward in every mode, backward reaches every parameter,
safetensors round trip."""
import pytest
import torch

import dynvit

from helpers import images, stages, training_loss

MODELS = dynvit.list_models()
# Full-size variants run at 64 px (16 patches) to keep the suite fast; geometry is unchanged.
SMALL = dict(img_size=64)


def _create(name, **kwargs):
    extra = {} if name.startswith('test_') else SMALL
    return dynvit.create_model(name, **extra, **kwargs)


def _input(model, batch):
    return images(batch, model.patch_embed.img_size[0])


def test_registry():
    assert {'dynamicvit_tiny_patch16_224', 'dynamicvit_small_patch16_224', 'dynamicvit_base_patch16_224',
            'test_dynamicvit', 'test_dynamicvit2', 'evovit_tiny_patch16_224', 'evovit_small_patch16_224',
            'evovit_base_patch16_224', 'test_evovit', 'test_evovit2'} <= set(MODELS)
    assert {'dynamicvit_small_patch16_224.deit_in1k', 'evovit_small_patch16_224.deit_in1k'} <= set(
        dynvit.list_models(pretrained=True))
    assert dynvit.list_models('dynamicvit_s*') == ['dynamicvit_small_patch16_224']


@pytest.mark.parametrize('name', MODELS)
def test_forward_all_modes(name):
    model = _create(name).eval()
    x = _input(model, 2)
    n = model.patch_embed.num_patches
    with torch.no_grad():
        logits, aux = model(x, return_aux=True)
        assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()
        expected = [model.num_keep(s, n) for s in range(stages(model))]
        assert aux.kept_tokens.tolist() == [expected] * 2
        assert torch.equal(model(x), logits)
        if hasattr(model, 'mode'):
            model.mode = 'threshold'
            logits, aux = model(x, return_aux=True)
            assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()
    model.train()
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, model.num_classes) and aux.kept_tokens.shape == (2, stages(model))


@pytest.mark.parametrize('name', MODELS)
def test_backward_reaches_every_parameter(name):
    model = _create(name).train()
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
}


@pytest.mark.parametrize('name', MODELS)
def test_safetensors_roundtrip(name, tmp_path):
    model = _create(name, num_classes=7).eval()
    model.set_sparsity(**OTHER_SETTINGS[type(model)])
    path = tmp_path / 'model.safetensors'
    dynvit.save_model(model, str(path), extra={'note': 'roundtrip'})
    meta = dynvit.read_dynvit_metadata(str(path))
    assert meta['model_args']['keep_ratio'] == list(model.keep_ratio)
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


def test_timm_create_model_works_after_import():
    import timm
    model = timm.create_model('test_dynamicvit')
    assert isinstance(model, dynvit.DynamicVisionTransformer)

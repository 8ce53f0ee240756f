"""The convolutional ViT stem (arXiv:2106.14881) and loading one family's file into another."""
import pytest
import torch

import dynvit
from dynvit.layers import ConvPatchEmbed
from dynvit.runtime import profile
from dynvit.runtime.macs import count_flops


@pytest.mark.parametrize('name', ['test_dynamicvit', 'test_evovit'])
def test_conv_stem_keeps_the_token_grid_and_counts_its_macs(name):
    model = dynvit.create_model(name, stem='conv', keep_ratio=1.0).eval()
    assert isinstance(model.patch_embed, ConvPatchEmbed) and model.model_args['stem'] == 'conv'
    x = torch.randn(1, 3, 32, 32)
    assert model.patch_embed(x).shape == (1, 64, 32)  # 32 px / patch 4 = 8 x 8 tokens
    _, report = profile(model, x)
    assert report.images[0].macs == count_flops(model, x) // 2  # the stem's convolutions included


def test_conv_stem_round_trips_through_a_file(tmp_path):
    model = dynvit.create_model('test_dynamicvit', stem='conv', keep_ratio=0.5).eval()
    dynvit.save_model(model, str(tmp_path / 'm.safetensors'))
    again = dynvit.load_model(str(tmp_path / 'm.safetensors')).eval()
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(again.patch_embed, ConvPatchEmbed)
    assert torch.equal(again(x), model(x))  # saved and reloaded: the same weights and kernels


@pytest.mark.parametrize('patch_size', [3, 6])
def test_conv_stem_needs_a_power_of_two_patch(patch_size):
    with pytest.raises(ValueError, match='power-of-two'):
        dynvit.create_model('test_dynamicvit', stem='conv', patch_size=patch_size, img_size=36)


def test_unknown_stem_is_named():
    with pytest.raises(ValueError, match="stem must be 'patch' or 'conv'"):
        dynvit.create_model('test_evovit', stem='hybrid')


def test_a_dense_dynamicvit_file_starts_an_evovit(tmp_path):
    """The zoo's Evo-ViT starts from the dense ViT saved as DynamicViT at keep ratio 1.0: the
    backbone loads, the keep predictors and DynamicViT's sparsity arguments are left behind."""
    dense = dynvit.create_model('test_dynamicvit', stem='conv', keep_ratio=1.0, num_classes=4).eval()
    dynvit.save_model(dense, str(tmp_path / 'dense.safetensors'))
    evo = dynvit.create_model('test_evovit', pretrained=True, keep_ratio=0.5, global_pool='token',
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'dense.safetensors'))).eval()
    assert evo.num_classes == 4 and isinstance(evo.patch_embed, ConvPatchEmbed) and set(evo.keep_ratio) == {0.5}
    evo.keep_ratio = 1.0
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(evo(x), dense(x))  # both are dense timm bit for bit at keep 1.0


def test_a_conv_stem_file_loads_into_a_gray_model(tmp_path):
    """timm adapts the first convolution to other input channels; for the conv stem that is proj.0."""
    model = dynvit.create_model('test_dynamicvit', stem='conv')
    dynvit.save_model(model, str(tmp_path / 'rgb.safetensors'))
    gray = dynvit.create_model('test_dynamicvit', pretrained=True, in_chans=1,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / 'rgb.safetensors')))
    assert torch.equal(gray.patch_embed.proj[0].weight, model.patch_embed.proj[0].weight.sum(1, keepdim=True))


def test_dense_copy_turns_every_kind_of_sparsity_off():
    from dynvit.models import dense_copy
    x = torch.randn(2, 3, 32, 32)
    for model in (dynvit.create_model('test_dynamicvit', mode='threshold', threshold=0.9),
                  dynvit.create_model('test_evovit'), dynvit.create_model('test_fbs_resnet', density=0.3)):
        _, report = profile(dense_copy(model).eval(), x)
        assert report.mean_macs == report.dense_macs

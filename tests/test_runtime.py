"""Analytic MAC counts agree with torch's FLOP counter and reproduce the paper's numbers."""
import pytest
import timm
import torch

import dynvit
from dynvit.runtime import count_flops, dense_vit_macs, profile

from helpers import make


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('name,kwargs', [
    ('vit_tiny_patch16_224', dict(img_size=96)),
    ('deit_small_patch16_224', dict(img_size=64)),
    ('vit_small_patch16_224', dict(img_size=64, reg_tokens=4, class_token=False, global_pool='avg', qk_norm=True)),
])
def test_dense_macs_match_flop_counter(name, kwargs, fused):
    model = timm.create_model(name, **kwargs).eval()
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    x = torch.randn(2, 3, kwargs['img_size'], kwargs['img_size'])
    analytic = dense_vit_macs(model, model.patch_embed.num_patches)
    counted = count_flops(model, x) / 2 / x.shape[0]
    assert abs(analytic - counted) / counted < 0.02
    _, report = profile(model, x)
    assert report.mean_macs == analytic and report.saved_fraction == 0.0


@pytest.mark.parametrize('mode', ['topk', 'threshold'])
@pytest.mark.parametrize('name', ['test_dynamicvit', 'test_dynamicvit2'])
def test_sparse_macs_match_flop_counter_of_the_executed_model(name, mode):
    """At batch 1 every executed matmul belongs to the one image: the counter sees exactly the
    work done, predictors included."""
    model = make(name, mode=mode, predictor_scale=30.0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
    analytic = int(model.count_macs(aux)[0])
    counted = count_flops(model, x) / 2
    assert abs(analytic - counted) / counted < 0.02
    assert analytic < dense_vit_macs(model, aux.num_patches)


def test_deit_small_numbers_match_the_paper():
    model = dynvit.create_model('dynamicvit_small_patch16_224').eval()
    _, report = profile(model, torch.randn(1, 3, 224, 224))
    image = report.images[0]
    assert image.kept == [137, 96, 67]
    assert abs(image.dense_macs / 1e9 - 4.6) < 0.05   # DeiT-S: 4.6 GMACs
    assert 2.85 < image.macs / 1e9 < 3.0              # paper: 2.9 G for DynamicViT-DeiT-S/0.7
    assert 0.34 < image.saved_fraction < 0.38
    assert 'GMACs' in str(report)


def test_report_is_per_image_in_threshold_mode():
    model = make('test_dynamicvit', mode='threshold', predictor_scale=30.0)
    x = torch.randn(5, 3, 32, 32)
    logits, report = profile(model, x)
    assert logits.shape == (5, 10) and len(report.images) == 5
    assert len({tuple(r.kept) for r in report.images}) > 1
    for r in report.images:
        assert r.macs < r.dense_macs
    # keeping no more tokens at any stage never costs more
    for a in report.images:
        for b in report.images:
            if all(ka <= kb for ka, kb in zip(a.kept, b.kept)):
                assert a.macs <= b.macs
    d = report.to_dict()
    assert d['unit'] == 'MACs' and len(d['images']) == 5


def test_dynamic_img_size_models_report_the_real_patch_count():
    model = make('test_dynamicvit', dynamic_img_size=True)
    _, report = profile(model, torch.randn(2, 3, 48, 40))
    assert report.total == 12 * 10
    assert report.images[0].kept == [model.num_keep(s, 120) for s in range(3)]
    dense = timm.create_model('vit_tiny_patch16_224', img_size=64, dynamic_img_size=True).eval()
    _, report = profile(dense, torch.randn(1, 3, 96, 64))
    assert report.total == 6 * 4
    assert report.mean_macs == dense_vit_macs(dense, 24)


def test_calibrated_threshold_hits_the_mean_keep_rate():
    model = make('test_dynamicvit', predictor_scale=3.0)  # spread, unsaturated keep probabilities
    x = torch.randn(16, 3, 32, 32)
    model.calibrate_threshold(x, keep_ratio=0.6)
    model.mode = 'threshold'
    _, report = profile(model, x)
    for s, target in enumerate((0.6, 0.36, 0.216)):
        mean_kept = sum(r.kept[s] for r in report.images) / 16
        assert abs(mean_kept / 64 - target) < 0.01
    assert len({tuple(r.kept) for r in report.images}) > 1  # still per image


@pytest.mark.parametrize('representative', [True, False])
@pytest.mark.parametrize('name', ['test_evovit', 'test_evovit2'])
def test_evovit_macs_match_flop_counter_of_the_executed_model(name, representative):
    """Blocks on the tokens they computed, the class-attention rows, the representative tokens."""
    model = dynvit.create_model(name, representative_token=representative).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
    analytic = int(model.count_macs(aux)[0])
    assert analytic == count_flops(model, x) / 2
    assert analytic < dense_vit_macs(model, aux.num_patches)


def test_evit_deit_small_numbers():
    """The released EViT DeiT-S table: 4.0, 3.0, 2.3 GMACs at keep rates 0.9, 0.7, 0.5 with fusion (4.6 dense)."""
    model = dynvit.create_model('evit_small_patch16_224').eval()
    x = torch.randn(1, 3, 224, 224)
    for keep, gmacs in ((0.9, 4.0), (0.7, 3.0), (0.5, 2.3)):
        _, report = profile(model.set_sparsity(keep_ratio=keep), x)
        assert round(report.images[0].macs / 1e9, 1) == gmacs and round(report.images[0].dense_macs / 1e9, 1) == 4.6
    assert report.images[0].per_block == [197] * 4 + [100] * 3 + [52] * 3 + [28] * 2  # CLS + kept + fused


def test_evovit_deit_small_numbers():
    model = dynvit.create_model('evovit_small_patch16_224').eval()
    _, report = profile(model, torch.randn(1, 3, 224, 224))
    image = report.images[0]
    assert image.kept == [98, 98]
    assert image.per_block == [197] * 4 + [100] * 8  # CLS + 98 informative + representative
    assert 3.0 < image.macs / 1e9 < 3.1  # paper: 3.0 G for Evo-ViT-S
    assert 0.32 < image.saved_fraction < 0.35
    assert 'fully updated patches' in str(report) and '197x4 100x8' in str(report)
    model.representative_token = False  # the released code: 99 tokens from block 4
    _, report = profile(model, torch.randn(1, 3, 224, 224))
    assert report.images[0].per_block == [197] * 4 + [99] * 8
    assert report.images[0].macs < image.macs

"""Evo-ViT: the dense limit, the slow-fast update against a plain per-block computation,
batch vs single images, checkpoints, settings and errors."""
import pytest
import timm
import torch
from safetensors.torch import save_file

import dynvit
from dynvit.layers import merge_slow_fast, representative_token, split_slow_fast

from helpers import dense_twin, images, make_spec
from numerics import assert_matches, assert_rounding_close, rounding_tolerance, tolerance

# (registered test variant, extra kwargs): stage-wise with average pooling; layer-wise with class-token
# pooling, a register token, LayerScale and qk-norm; fused attention off; a prefix-heavy backbone
SPECS = {
    'stagewise_avg': ('test_evovit', dict()),
    'layerwise_reg_ls_qknorm': ('test_evovit2', dict()),
    'explicit_attention': ('test_evovit', dict(fused=False)),
    'regs_maxpool': ('test_evovit', dict(reg_tokens=3, global_pool='max', select_loc=(1, 3), keep_ratio=(0.3, 0.6))),
}


def make_evo(spec, **kwargs):
    return make_spec(SPECS, spec, sharpen=True, **kwargs)  # importance scores far apart at the keep boundary


@pytest.mark.parametrize('spec', list(SPECS))
def test_keep_ratio_one_is_the_dense_timm_model(spec):
    model = make_evo(spec, keep_ratio=1.0)
    dense = dense_twin(model)
    x = images(3)
    with torch.no_grad():
        out, aux = model(x, return_aux=True)
        torch.testing.assert_close(out, dense(x), rtol=0, atol=0)
    assert aux.kept_tokens.tolist() == [[64] * len(model.select_loc)] * 3
    assert (aux.tokens_per_block == 64 + model.num_prefix_tokens).all()
    assert aux.cls_attention_keys.sum() == 0  # nothing ranked, so no attention row computed


def _attention_row(block, x):
    """Class-token attention, mean over heads, from the full attention matrix written out."""
    attn = block.attn
    L = x.shape[0]
    qkv = attn.qkv(block.norm1(x)).reshape(L, 3, attn.num_heads, -1).permute(1, 2, 0, 3)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    a = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)  # [H, L, L]
    return a[:, 0].mean(0)


def reference(model, x):
    """The paper's per-block definition, image by image, written plainly: before every block from
    the first selection on, the placeholders' representative token is recomputed from the current
    placeholders; informative tokens get the block's output, placeholders the representative
    token's residual. Returns final tokens, the informative sets and the smallest importance gap
    at a keep boundary."""
    P = model.num_prefix_tokens
    tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    out, chosen, gap = [], [], float('inf')
    for t in tokens:
        N = t.shape[0] - P
        score = informative = placeholders = None
        sets = []
        for i, block in enumerate(model.blocks):
            if i in model.select_loc:
                s = model.select_loc.index(i)
                k = int(N * model.keep_ratio[s])
                order = sorted(range(N), key=lambda j: -float(score[j]))
                informative, placeholders = order[:k], order[k:]
                gap = min(gap, float(score[order[k - 1]] - score[order[k]]))
                sets.append(sorted(informative))
            if informative is None:
                row = _attention_row(block, t)
                score = row[P:].clone()
                t = block(t[None])[0]
                continue
            inf = torch.tensor(informative) + P
            ph = torch.tensor(placeholders) + P
            seq = [t[:P], t[inf]]
            rep = None
            if model.representative_token:
                w = score[ph - P] / score[ph - P].sum()
                rep = (w[:, None] * t[ph]).sum(0, keepdim=True)
                seq.append(rep)
            seq = torch.cat(seq)
            row = _attention_row(block, seq)
            y = block(seq[None])[0]
            new = t.clone()
            new[:P] = y[:P]
            new[inf] = y[P:P + len(informative)]
            if rep is not None:
                new[ph] = t[ph] + (y[-1] - rep[0])
            t = new
            score = score.clone()
            score[inf - P] = (1 - model.tradeoff) * score[inf - P] + model.tradeoff * row[P:P + len(informative)]
        out.append(t)
        chosen.append(sets)
    return model.norm(torch.stack(out)), chosen, gap


@pytest.mark.parametrize('representative', [True, False])
@pytest.mark.parametrize('spec', list(SPECS))
def test_fast_path_matches_plain_per_block_reference(spec, representative):
    model = make_evo(spec, representative_token=representative)
    x = images(3)
    with torch.no_grad():
        feats, aux = model.forward_features(x, return_aux=True)
        ref, chosen, gap = reference(model, x)
    assert gap > rounding_tolerance(model, torch.ones(())), 'importance ties at the keep boundary: pick another seed'
    ours = [[m.nonzero()[:, 0].tolist() for m in (mask[b] for mask in aux.informative)] for b in range(3)]
    assert ours == chosen
    assert_rounding_close(model, feats, ref)


def test_placeholders_receive_exactly_the_representative_residual():
    B, P, N, C, k = 2, 2, 10, 8, 4
    x = torch.randn(B, P + N, C)
    order = torch.stack([torch.randperm(N) for _ in range(B)])
    informative, placeholders = order[:, :k], order[:, k:]
    weights = torch.rand(B, N)
    compact, rep = split_slow_fast(x, P, informative, weights)
    assert compact.shape == (B, P + k + 1, C)
    for b in range(B):  # representative = importance-weighted mean of the placeholders
        w = weights[b, placeholders[b]]
        expected = (w[:, None] * x[b, P + placeholders[b]]).sum(0) / w.sum()
        torch.testing.assert_close(rep[b, 0], expected, rtol=0, atol=tolerance(N, expected))  # sums of N in another order
    y = torch.randn_like(compact)  # any block output
    merged = merge_slow_fast(x, y, P, informative, rep)
    residual = y[:, -1] - rep[:, 0]
    for b in range(B):
        assert torch.equal(merged[b, :P], y[b, :P])
        assert torch.equal(merged[b, P + informative[b]], y[b, P:P + k])
        expected = x[b, P + placeholders[b]] + residual[b]
        torch.testing.assert_close(merged[b, P + placeholders[b]], expected, rtol=0, atol=tolerance(2, expected))
    # the released code's behaviour: placeholders untouched
    compact, rep = split_slow_fast(x, P, informative, None)
    assert rep is None and compact.shape == (B, P + k, C)
    merged = merge_slow_fast(x, torch.randn_like(compact), P, informative, None)
    for b in range(B):
        assert torch.equal(merged[b, P + placeholders[b]], x[b, P + placeholders[b]])
    # all-zero importance: plain mean instead of a division by zero
    expected = x[:, P:].mean(1, keepdim=True)
    torch.testing.assert_close(representative_token(x[:, P:], torch.zeros(B, N)), expected, rtol=0,
                               atol=tolerance(N, expected))


@pytest.mark.parametrize('spec', list(SPECS))
def test_batch_equals_single_images(spec):
    model = make_evo(spec)
    x = images(4)
    with torch.no_grad():
        batch, aux = model(x, return_aux=True)
        singles = [model(x[b:b + 1], return_aux=True) for b in range(4)]
    # a batch rounds differently from one image: logits up to rounding, decisions exact unless at a tie
    assert_matches(model, x, torch.cat([one for one, _ in singles]), batch, 'single images',
                   [(torch.cat([a.informative[s] for _, a in singles]), m) for s, m in enumerate(aux.informative)])


def test_images_choose_their_own_tokens_and_settings_change_on_a_built_model():
    model = make_evo('stagewise_avg')
    x = images(2)
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
        assert not torch.equal(aux.informative[0][0], aux.informative[0][1])
        model.keep_ratio = 0.25
        _, aux = model(x, return_aux=True)
        assert aux.kept_tokens.tolist() == [[16, 16]] * 2
        assert aux.tokens_per_block[0].tolist() == [65, 65, 18, 18]  # CLS + 16 + representative
        model.set_sparsity(select_loc=(1, 2, 3), keep_ratio=(0.5, 0.25, 0.125))
        _, aux = model(x, return_aux=True)
        assert aux.kept_tokens.tolist() == [[32, 16, 8]] * 2
        model.representative_token = False
        _, aux = model(x, return_aux=True)
        assert aux.tokens_per_block[0].tolist() == [65, 33, 17, 9]
    assert model.sparsity_config() == dict(select_loc=[1, 2, 3], keep_ratio=[0.5, 0.25, 0.125], tradeoff=0.5,
                                           representative_token=False)
    model.set_sparsity(keep_ratio=0.3)
    model.select_loc = (2,)  # a single ratio carries over to the new stages
    assert model.keep_ratio == (0.3,)


def test_training_runs_the_same_computation_with_both_heads():
    model = make_evo('stagewise_avg')
    x = images(2)
    with torch.no_grad():
        expected = model(x)
    model.train()
    logits, aux = model(x, return_aux=True)
    assert torch.equal(logits, expected)  # no dropout configured: train == eval, the same kernels
    assert aux.cls_logits.shape == (2, 10)
    loss, parts = dynvit.train.EvoViTLoss()(logits, aux, torch.tensor([1, 2]))
    assert set(parts) == {'ce', 'ce_cls'}
    loss.backward()
    assert model.head_cls.weight.grad.abs().sum() > 0 and model.pos_embed.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_evo('layerwise_reg_ls_qknorm').train()
    x = images(2)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        logits, aux = model(x, return_aux=True)
        dynvit.train.EvoViTLoss()(logits, aux, torch.tensor([0, 3]))[0].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)  # checkpointing recomputes the same forward with the same kernels


def test_reset_classifier_resets_both_heads():
    model = dynvit.create_model('test_evovit')
    model.reset_classifier(4)
    assert model.head.out_features == 4 and model.head_cls.out_features == 4
    model.train()
    _, aux = model(images(1), return_aux=True)
    assert aux.cls_logits.shape == (1, 4)
    no_aux = dynvit.create_model('test_evovit', aux_head=False).train()
    _, aux = no_aux(images(1), return_aux=True)
    assert aux.cls_logits is None and not any(k.startswith('head_cls') for k in no_aux.state_dict())
    with pytest.raises(ValueError, match='cls_weight=0'):
        dynvit.train.EvoViTLoss()(torch.randn(1, 10), aux, torch.tensor([0]))


def _deit(tmp_path, **kwargs):
    deit = timm.create_model('deit_tiny_patch16_224', img_size=64, num_classes=10, **kwargs).eval()
    path = tmp_path / 'deit.safetensors'
    save_file(deit.state_dict(), str(path))
    return deit, str(path)


def test_timm_deit_weights_load_as_backbone_and_both_heads(tmp_path):
    deit, path = _deit(tmp_path)
    x = images(2, 64)
    # class-token pooling, nothing dropped: exactly DeiT
    overlay = dict(file=path, num_classes=10)
    evo = dynvit.create_model('evovit_tiny_patch16_224', img_size=64, num_classes=10, global_pool='token',
                              keep_ratio=1.0, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    with torch.no_grad():
        torch.testing.assert_close(evo(x), deit(x), rtol=0, atol=0)
        evo.train()  # no dropout configured: the class-token head, started from DeiT's, is DeiT too
        _, aux = evo(x, return_aux=True)
        assert torch.equal(aux.cls_logits, deit(x))
    # the default (patch pooling): DeiT's final norm becomes the pooled-feature norm, and DeiT's
    # norm + head the class-token head
    evo = dynvit.create_model('evovit_tiny_patch16_224', img_size=64, num_classes=10, pretrained=True,
                              pretrained_cfg_overlay=dict(file=path, num_classes=10)).train()
    sd = deit.state_dict()
    assert torch.equal(evo.fc_norm.weight, sd['norm.weight']) and torch.equal(evo.norm_cls.bias, sd['norm.bias'])
    assert torch.equal(evo.head_cls.weight, sd['head.weight'])
    evo.keep_ratio = 1.0
    with torch.no_grad():
        _, aux = evo(x, return_aux=True)
        assert torch.equal(aux.cls_logits, deit(x))
    # another number of classes: both heads start fresh, the backbone loads
    evo = dynvit.create_model('evovit_tiny_patch16_224', img_size=64, num_classes=3, pretrained=True,
                              pretrained_cfg_overlay=dict(file=path, num_classes=10))
    assert evo.head.out_features == 3 and evo.head_cls.out_features == 3
    assert torch.equal(evo.blocks[5].attn.qkv.weight, sd['blocks.5.attn.qkv.weight'])


def test_checkpoint_with_wrong_keys_is_refused(tmp_path):
    _, path = _deit(tmp_path, depth=6)
    with pytest.raises(ValueError, match='missing: blocks.6'):
        dynvit.create_model('evovit_tiny_patch16_224', img_size=64, num_classes=10, pretrained=True,
                            pretrained_cfg_overlay=dict(file=path, num_classes=10))


def test_bad_arguments_raise_clear_errors():
    model = dynvit.create_model('test_evovit')
    before = model.sparsity_config()
    for kwargs, match in [
        (dict(keep_ratio=0.0), r'keep_ratio .* must be in \(0, 1\]'),
        (dict(keep_ratio=1.5), r'must be in \(0, 1\]'),
        (dict(keep_ratio=(0.5, 0.5, 0.5)), '3 values for 2 selections'),
        (dict(select_loc=(0, 2)), r'select_loc must be increasing block indices in \[1, 4\)'),
        (dict(select_loc=(3, 2)), 'increasing'),
        (dict(select_loc=(2, 4)), r'\[1, 4\)'),
        (dict(select_loc='ab'), 'sequence of block indices'),
        (dict(select_loc=(1, 3), keep_ratio=2.0), r'\(0, 1\]'),
        (dict(tradeoff=0.0), r'tradeoff must be a number in \(0, 1\]'),
        (dict(tradeoff='half'), 'tradeoff'),
        (dict(representative_token='yes'), 'True or False'),
    ]:
        with pytest.raises(ValueError, match=match):
            model.set_sparsity(**kwargs)
        assert model.sparsity_config() == before, f'{kwargs} changed the model'
    model.set_sparsity(select_loc=(1, 2), keep_ratio=(0.5, 0.3))
    with pytest.raises(ValueError, match='give keep_ratio with the new select_loc'):
        model.select_loc = (1, 2, 3)
    for kwargs, match in [
        (dict(class_token=False, global_pool='avg'), 'class_token=False is not supported'),
        (dict(global_pool='map'), 'attention pooling'),
        (dict(keep_ratio=-1), r'\(0, 1\]'),
        (dict(block_fn=timm.models.vision_transformer.ParallelScalingBlock), 'timm Block blocks'),
        (dict(attn_layer='diff'), 'with timm Attention'),
        (dict(features_only=True), 'features_only'),
    ]:
        with pytest.raises(ValueError, match=match):
            dynvit.create_model('test_evovit', **kwargs)
    with pytest.raises(ValueError, match='expected images of size'):
        model(images(1, 48))
    with pytest.raises(ValueError, match='expected 3 input channels'):
        model(images(1, 32, chans=1))
    with pytest.raises(ValueError, match='attn_mask and is_causal are not supported'):
        model(images(1), attn_mask=torch.ones(1, 65, 65, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match='keep_ratio=1.0'):
        model.forward_intermediates(images(1))
    model.keep_ratio = 1.0
    assert len(model.forward_intermediates(images(1))[1]) == len(model.blocks)


def test_any_image_size_and_bf16_autocast():
    model = dynvit.create_model('test_evovit', dynamic_img_size=True).eval()
    with torch.no_grad():
        for size, patches in ((32, 64), (48, 144), (40, 100)):
            _, aux = model(images(2, size), return_aux=True)
            assert aux.num_patches == patches and aux.kept_tokens[0].tolist() == [patches // 2] * 2
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(images(2))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_own_files_load_across_pooling_and_head_settings(tmp_path):
    """The final norm moves between before-pooling (norm) and after-pooling (fc_norm) placement,
    and starts a class-token head the file does not have."""
    x = images(2)
    source = dynvit.create_model('test_evovit', aux_head=False).eval()
    path = str(tmp_path / 'avg.safetensors')
    dynvit.save_model(source, path)
    with_head = dynvit.create_model('test_evovit', aux_head=True, checkpoint_path=path)
    assert torch.equal(with_head.norm_cls.weight, source.fc_norm.weight)
    assert torch.equal(with_head.head_cls.weight, source.head.weight)
    token = dynvit.create_model('test_evovit', global_pool='token', checkpoint_path=path)
    assert torch.equal(token.norm.weight, source.fc_norm.weight)
    # a pooling change made by reset_classifier survives save and load
    source.reset_classifier(5, 'token')
    dynvit.save_model(source, path)
    loaded = dynvit.load_model(path).eval()
    assert loaded.global_pool == 'token'
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)

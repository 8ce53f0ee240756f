"""Each loss term (DynamicViT, Evo-ViT) against a plain computation."""
import math

import pytest
import torch

import dynvit
from dynvit.train import DynamicViTLoss, EvoViTLoss, distillation_kl, ratio_loss, token_distillation_loss

from helpers import images, make
from numerics import tolerance


def _close(a, b):
    """Equal up to the rounding of about eight float32 operations (softmax, log, products, sums, means)
    written in another order."""
    return bool(((a - b).abs() <= tolerance(8, b)).all())


def test_ratio_loss_plain():
    decisions = [torch.tensor([[1., 1., 0., 0.], [1., 1., 1., 1.]]), torch.tensor([[1., 0., 0., 0.], [0., 0., 0., 0.]])]
    ratios = (0.5, 0.25)
    # stage 0: images keep 0.5 and 1.0 -> (0^2 + 0.5^2) / 2; stage 1: 0.25 and 0 -> (0 + 0.25^2) / 2
    expected = ((0.0 + 0.25) / 2 + (0.0 + 0.0625) / 2) / 2
    assert math.isclose(ratio_loss(decisions, ratios).item(), expected, rel_tol=tolerance(4))
    with pytest.raises(ValueError, match='2 decision stages but 3 keep ratios'):
        ratio_loss(decisions, (0.5, 0.25, 0.1))


def test_distillation_kl_plain():
    s, t = torch.randn(4, 7), torch.randn(4, 7)
    for temp in (1.0, 2.5):
        p_t = torch.softmax(t / temp, -1)
        plain = (p_t * (p_t.log() - torch.log_softmax(s / temp, -1))).sum(-1).mean() * temp ** 2
        assert _close(distillation_kl(s, t, temp), plain)
    assert distillation_kl(t, t).abs() <= tolerance(8)
    with pytest.raises(ValueError, match='temperature must be positive'):
        distillation_kl(s, t, 0.0)


def test_token_distillation_plain():
    s, t = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    keep = torch.tensor([[1., 0., 1., 0., 0.], [0., 0., 0., 0., 1.]])
    kept = [(0, 0), (0, 2), (1, 4)]
    plain = sum(((s[b, n] - t[b, n]) ** 2).sum() for b, n in kept) / (len(kept) * 3)
    assert _close(token_distillation_loss(s, t, keep), plain)
    assert token_distillation_loss(s, t, torch.zeros(2, 5)) == 0
    with pytest.raises(ValueError, match='differ in shape'):
        token_distillation_loss(s, t[:, :4], keep)


def test_dynamicvit_loss_combines_the_terms_with_the_paper_weights():
    model = make('test_dynamicvit').train()
    teacher = make('test_dynamicvit', keep_ratio=1.0)  # dense behaviour in eval
    x, y = images(3), torch.tensor([1, 2, 3])
    logits, aux = model(x, return_aux=True)
    with torch.no_grad():
        t_tokens = teacher.forward_features(x)
        t_logits = teacher.forward_head(t_tokens)
    crit = DynamicViTLoss(model.keep_ratio)
    loss, parts = crit(logits, aux, y, teacher_logits=t_logits, teacher_tokens=t_tokens)
    ce = torch.nn.functional.cross_entropy(logits, y)
    expected = (ce + 2.0 * ratio_loss(aux.decisions, model.keep_ratio) + 0.5 * distillation_kl(logits, t_logits)
                + 0.5 * token_distillation_loss(aux.features[:, 1:], t_tokens[:, 1:], aux.decisions[-1]))
    assert _close(loss, expected)
    assert set(parts) == {'ce', 'ratio', 'kl', 'token'}
    loss.backward()
    assert all(p.grad is not None for p in model.score_predictor.parameters())
    # without a teacher: CE + ratio only
    logits, aux = model(x, return_aux=True)
    loss, parts = crit(logits, aux, y)
    assert set(parts) == {'ce', 'ratio'}


def test_token_distillation_needs_the_masked_forward():
    model = make('test_dynamicvit')  # eval: gathered tokens
    logits, aux = model(images(2), return_aux=True)
    with pytest.raises(ValueError, match='training-mode'):
        DynamicViTLoss(model.keep_ratio)(logits, aux, torch.tensor([0, 1]), teacher_tokens=torch.zeros(2, 65, 32))


def test_evovit_loss_plain():
    logits, cls_logits, teacher = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    target = torch.tensor([0, 4, 2, 2])
    aux = dynvit.EvoViTAux([], [], torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4, 0), 16,
                           cls_logits=cls_logits)

    def ce(z):
        return -torch.log_softmax(z, -1)[torch.arange(4), target].mean()

    loss, parts = EvoViTLoss()(logits, aux, target)
    assert _close(loss, 0.5 * ce(logits) + 0.5 * ce(cls_logits))
    assert set(parts) == {'ce', 'ce_cls'}
    loss, parts = EvoViTLoss(cls_weight=0.25, distill_weight=2.0, temperature=3.0)(logits, aux, target, teacher)
    expected = 0.75 * ce(logits) + 0.25 * ce(cls_logits) + 2.0 * distillation_kl(logits, teacher, 3.0)
    assert _close(loss, expected) and set(parts) == {'ce', 'ce_cls', 'kl'}
    loss, _ = EvoViTLoss(cls_weight=0.0)(logits, None, target)
    assert _close(loss, ce(logits))
    with pytest.raises(ValueError, match=r'cls_weight must be in \[0, 1\]'):
        EvoViTLoss(cls_weight=1.5)


def test_saliency_l1_plain():
    s = [torch.tensor([[0.0, 2.0], [1.0, 3.0]]), None, torch.tensor([[4.0, 0.0, 2.0]])]
    # gate 0: mean |s| = 1.5; gate 2: 2.0; the gate that was off does not count
    assert math.isclose(dynvit.train.saliency_l1(s).item(), (1.5 + 2.0) / 2, rel_tol=tolerance(4))
    assert dynvit.train.saliency_l1([None, None]).item() == 0.0


def test_fbs_loss_plain():
    logits, target, teacher = torch.randn(3, 5), torch.tensor([0, 4, 2]), torch.randn(3, 5)
    aux = type('Aux', (), {'saliency': [torch.rand(3, 8), torch.rand(3, 4)]})()
    loss, parts = dynvit.train.FBSLoss(l1_weight=0.2, distill_weight=0.3, temperature=2.0)(
        logits, aux, target, teacher_logits=teacher)
    plain_l1 = (aux.saliency[0].mean() + aux.saliency[1].mean()) / 2
    plain = torch.nn.functional.cross_entropy(logits, target) + 0.2 * plain_l1 + 0.3 * distillation_kl(logits, teacher, 2.0)
    assert _close(loss, plain)
    assert set(parts) == {'ce', 'l1', 'kl'}
    with pytest.raises(ValueError, match='l1_weight'):
        dynvit.train.FBSLoss(l1_weight=-1)

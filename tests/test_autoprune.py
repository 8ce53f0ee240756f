"""AutoPrune (dynvit.compress.autoprune): the straight-through gradient reaches the scores, pruned
weights come back, the regulariser prunes, the trainer trains the scores, finalising bakes the
masks, on every family."""
import pytest
import torch
import torch.nn as nn

import dynvit
from dynvit.compress import (
    apply_autoprune,
    autoprune_layers,
    autoprune_penalty,
    finalize_autoprune,
    magnitude_prune,
    masked_layers,
    sparsity,
    step_ste,
)
from dynvit.train import TrainConfig, Trainer

from helpers import images, randomize_batch_norms, training_loss

MODELS = ['test_dynamicvit', 'test_evovit', 'test_fbs_resnet', 'test_fbs_efficientnet']


def _model(name, **kwargs):
    return randomize_batch_norms(dynvit.create_model(name, **kwargs)).eval()


def test_step_ste_forward_is_a_step_and_backward_a_leaky_hard_sigmoid():
    m = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    h = step_ste(m, width=1.0, leak=0.1)
    assert h.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    h.sum().backward()
    assert torch.allclose(m.grad, torch.tensor([0.05, 0.5, 0.5, 0.5, 0.05]))


def test_pruned_weight_gets_gradient_and_comes_back():
    torch.manual_seed(0)
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
    apply_autoprune(layer, include='all', init=1.0)
    with torch.no_grad():
        layer.weight_scores[0, 3] = -0.5  # the weight the task needs starts pruned
    x = torch.eye(4)
    target = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    loss = ((layer(x) - target) ** 2).mean()
    loss.backward()
    # the STE reaches the pruned entry's score: its gradient says "keep me" (negative)
    assert layer.weight_scores.grad[0, 3] < 0
    assert layer.weight_orig.grad[0, 3] == 0  # the pruned weight itself is frozen while pruned
    opt = torch.optim.SGD([layer.weight_scores], lr=0.5)
    for _ in range(10):
        opt.zero_grad()
        ((layer(x) - target) ** 2).mean().backward()
        opt.step()
    assert layer.weight_scores[0, 3] > 0 and layer.weight[0, 3] == 3.0  # recovered, with its old value


@pytest.mark.parametrize('name', MODELS)
def test_autoprune_on_every_family(name):
    """Scores on the default layers, the STE gradient reaches them in a training step, the
    regulariser alone prunes, inference (FBS functional paths included) uses the masked weights,
    and finalising bakes the masks into plain weights with the same outputs."""
    torch.manual_seed(0)
    model = _model(name)
    layers = apply_autoprune(model)
    assert layers and set(autoprune_layers(model)) == set(layers) == set(masked_layers(model))
    assert not any('score_predictor' in n or '.gate' in n or n.startswith(('head', 'fc', 'classifier'))
                   for n in layers)
    x = images(4, size=model.pretrained_cfg['input_size'][-1], chans=model.pretrained_cfg['input_size'][0])
    target = torch.arange(4) % model.num_classes
    model.train()
    logits, aux = model(x, return_aux=True)
    (training_loss(model, logits, aux, target) + autoprune_penalty(model)).backward()
    scores = [m.weight_scores for m in layers.values()]
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scores)
    # the regulariser alone drives scores below zero
    opt = torch.optim.Adam(scores, lr=0.6)
    for _ in range(3):
        opt.zero_grad()
        autoprune_penalty(model).backward()
        opt.step()
    stats = sparsity(model)
    assert 0.5 < stats.overall <= 1.0
    # eval uses the current masks, also where FBS reads its weights functionally
    model.eval()
    for m in layers.values():
        with torch.no_grad():
            m.weight_scores.copy_(torch.randn_like(m.weight_scores))  # about half kept
    with torch.no_grad():
        out = model(x)
    finalize_autoprune(model)
    assert not masked_layers(model) and not any(n.endswith('weight_scores') for n, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(model(x), out)  # the same weights (masked = baked in), the same kernels
    assert 0.3 < sparsity(model).overall < 0.7


def test_autoprune_refusals():
    model = _model('test_dynamicvit')
    magnitude_prune(model, 0.5)
    with pytest.raises(ValueError, match='already carries a pruning mask'):
        apply_autoprune(model)
    model = _model('test_dynamicvit')
    apply_autoprune(model)
    with pytest.raises(ValueError, match='finalize_autoprune'):
        magnitude_prune(model, 0.5)
    with pytest.raises(ValueError, match='init > 0'):
        apply_autoprune(_model('test_dynamicvit'), init=0.0)
    with pytest.raises(ValueError, match='no AutoPrune layers'):
        autoprune_penalty(_model('test_dynamicvit'))


def test_trainer_trains_the_scores_with_the_regulariser(tmp_path):
    torch.manual_seed(0)
    model = _model('test_fbs_resnet')
    apply_autoprune(model)
    data = torch.utils.data.TensorDataset(images(16, size=32), torch.arange(16) % 10)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-3, distill=False, autoprune_weight=1e3, autoprune_lr=0.4,
                      warmup_epochs=0)
    trainer = Trainer(model, data, None, cfg, out_dir=str(tmp_path), progress=False)
    assert trainer.optimizer.param_groups[-1]['name'] == 'autoprune'
    assert trainer.optimizer.param_groups[-1]['weight_decay'] == 0.0
    history = trainer.fit()
    assert history[-1]['weight_sparsity'] > history[0]['weight_sparsity'] and history[-1]['weight_sparsity'] > 0.5
    with pytest.raises(ValueError, match='apply_autoprune'):
        Trainer(_model('test_fbs_resnet'), data, None, cfg, progress=False)

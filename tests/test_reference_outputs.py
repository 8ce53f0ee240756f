"""Refactorings change no output: every registered ``test_*`` model, with the weights and input
recorded by ``record_reference_outputs.py`` (before the model protocol and the loading layer
were introduced), still gives the recorded logits, per-image MACs and kept counts. The zoo
models' recorded logits are checked in ``test_zoo.py`` on the 500-image sample."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import dynvit

from numerics import assert_matches

REFERENCE = Path(__file__).parent / 'fixtures' / 'reference_outputs.safetensors'

pytestmark = pytest.mark.numerics  # run again under other CPU kernels (README's test command)


def _recorded():
    with safe_open(str(REFERENCE), framework='pt') as f:
        names = json.loads(f.metadata()['models'])
        return names, {k: f.get_tensor(k) for k in f.keys()}


NAMES, TENSORS = _recorded()


def test_every_recorded_model_is_still_registered():
    # families added after the recording have their own reference tests (official fixtures)
    assert set(NAMES['test']) <= set(dynvit.list_models('test_*'))


@pytest.mark.parametrize('name', NAMES['test'])
def test_same_outputs_as_recorded(name):
    model = dynvit.create_model(name).eval()
    prefix = f'{name}/weights/'
    model.load_state_dict({k[len(prefix):]: v for k, v in TENSORS.items() if k.startswith(prefix)})
    if 'execution' in model.sparsity_config():
        model.set_sparsity(execution='grouped')  # as recorded (when 'auto' still timed the strategies)
    x = TENSORS[f'{name}/input']
    modes = {'eval': {}, 'threshold': dict(mode='threshold', threshold=0.5)}
    for mode, settings in modes.items():
        if f'{name}/{mode}/logits' not in TENSORS:
            continue
        model.set_sparsity(**settings)
        with torch.no_grad():
            logits, aux = model(x, return_aux=True)
        # equal up to rounding (the recording may come from another machine), MACs and kept counts
        # exact, apart from images with a decision at a near tie
        assert_matches(model, x, logits, TENSORS[f'{name}/{mode}/logits'], f'{name} ({mode})',
                       [(aux.macs, TENSORS[f'{name}/{mode}/macs']), (aux.kept, TENSORS[f'{name}/{mode}/kept'])])


def test_a_decision_at_its_threshold_is_reported_and_any_other_difference_fails():
    """How the comparisons above treat a recording made where rounding went the other way: a
    DynamicViT whose threshold equals one image's keep probability (that token is kept here, dropped
    in the "recording", made with the next float32 up) gets that image reported with a NearTieWarning and
    left out; the same difference on an image with no near tie fails."""
    from helpers import images, make
    from numerics import NearTieWarning
    model = make('test_dynamicvit', predictor_scale=8.0).set_sparsity(mode='threshold', threshold=0.5)
    x = images(4)
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
        probs = aux.keep_probs[0][1]
        at = float(probs[(probs - 0.5).abs().argmin()])  # image 1's probability nearest to 0.5
        model.set_sparsity(threshold=float(torch.nextafter(torch.tensor(at), torch.tensor(1.0))))  # float32's next
        recorded, recorded_aux = model(x, return_aux=True)
        model.set_sparsity(threshold=at)
        out, aux = model(x, return_aux=True)
    assert not torch.equal(aux.kept[1], recorded_aux.kept[1])
    assert torch.equal(aux.kept[[0, 2, 3]], recorded_aux.kept[[0, 2, 3]])
    with pytest.warns(NearTieWarning, match=r'images \[1\] not compared'):
        compared = assert_matches(model, x, out, recorded, 'tie', [(aux.kept, recorded_aux.kept)])
    assert compared.tolist() == [True, False, True, True]
    with pytest.raises(AssertionError, match=r'images \[2\] differ .* with no decision near a tie'):
        assert_matches(model, x, out, recorded + torch.tensor([0.0, 0.0, 1e-3, 0.0])[:, None], 'changed', [])

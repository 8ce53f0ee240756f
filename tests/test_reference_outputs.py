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

REFERENCE = Path(__file__).parent / 'fixtures' / 'reference_outputs.safetensors'


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
        model.set_sparsity(execution='grouped')  # as recorded ('auto' picks a strategy by timing)
    x = TENSORS[f'{name}/input']
    modes = {'eval': {}, 'threshold': dict(mode='threshold', threshold=0.5)}
    for mode, settings in modes.items():
        if f'{name}/{mode}/logits' not in TENSORS:
            continue
        model.set_sparsity(**settings)
        with torch.no_grad():
            logits, aux = model(x, return_aux=True)
        torch.testing.assert_close(logits, TENSORS[f'{name}/{mode}/logits'], rtol=0, atol=1e-6)
        assert torch.equal(aux.macs, TENSORS[f'{name}/{mode}/macs'])
        assert torch.equal(aux.kept, TENSORS[f'{name}/{mode}/kept'])

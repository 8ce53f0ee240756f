"""Records what the models compute, so that a refactoring can show it changed nothing.

Writes ``tests/fixtures/reference_outputs.safetensors``: for every registered ``test_*`` model
its weights (random, seeded; FBS BatchNorms randomised so folding is exercised), a fixed input
and its eval logits, per-image MACs and kept counts (DynamicViT also in threshold mode); for
every shipped zoo model its logits and per-image MACs on the fixed 500-image Fashion-MNIST
sample. ``tests/test_reference_outputs.py`` and ``tests/test_zoo.py`` compare against it.

    python tests/record_reference_outputs.py

It re-records everything from the current code: run it only when outputs are meant to change.
``--macs`` re-records only the per-image MACs, keeping the recorded logits and kept counts: for a
change in what a computation executes (and counts), not in what it computes.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
import dynvit  # noqa: E402
from dynvit.data import model_transform  # noqa: E402
from dynvit.hub.zoo import WEIGHTS_DIR  # noqa: E402
from helpers import randomize_batch_norms  # noqa: E402

OUT = Path(__file__).parent / 'fixtures' / 'reference_outputs.safetensors'
SAMPLE = Path(__file__).parent / 'fixtures' / 'fashion_mnist_test500.npz'
BATCH = 4


def model_input(name: str, model: torch.nn.Module) -> torch.Tensor:
    c, h, w = model.pretrained_cfg['input_size']
    if hasattr(model, 'patch_embed'):
        h, w = model.patch_embed.img_size
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    return torch.randn(BATCH, c, h, w, generator=g)


def test_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = dynvit.create_model(name).eval()
    if 'execution' in model.sparsity_settings():  # FBS
        randomize_batch_norms(model)
        model.execution = 'grouped'  # as recorded when 'auto' still timed the strategies (tested equal up to rounding elsewhere)
    if 'threshold' in model.sparsity_settings():  # spread the keep scores so threshold mode differs per image
        with torch.no_grad():
            for p in model.score_predictor.parameters():
                if p.ndim == 2:
                    p.mul_(8.0)
    return model


def run(model: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad():
        logits, aux = model(x, return_aux=True)
    return logits, aux.macs, aux.kept


def zoo_model(name: str) -> torch.nn.Module:
    model = dynvit.create_model(name, pretrained=True).eval()
    if 'execution' in model.sparsity_config():
        model.set_sparsity(execution='grouped')  # as recorded when 'auto' still timed the strategies (they round differently)
    return model


def zoo_input(model: torch.nn.Module, data) -> torch.Tensor:
    tf = model_transform(model)
    return torch.stack([tf(Image.fromarray(im)) for im in data['images']])


def main() -> None:
    if '--macs' in sys.argv:
        return record_macs()
    tensors, names = {}, {'test': [], 'zoo': []}
    for name in dynvit.list_models('test_*'):
        model = test_model(name)
        x = model_input(name, model)
        for k, v in model.state_dict().items():
            tensors[f'{name}/weights/{k}'] = v.contiguous()
        tensors[f'{name}/input'] = x
        modes = {'eval': {}}
        if 'threshold' in model.sparsity_settings():
            modes['threshold'] = dict(mode='threshold', threshold=0.5)
        for mode, settings in modes.items():
            model.set_sparsity(**settings)
            logits, macs, kept = run(model, x)
            tensors[f'{name}/{mode}/logits'] = logits
            tensors[f'{name}/{mode}/macs'] = macs
            tensors[f'{name}/{mode}/kept'] = kept
        names['test'].append(name)
    data = np.load(SAMPLE)
    for path in sorted(WEIGHTS_DIR.glob('*.safetensors')):
        name = path.name[:-len('.safetensors')]
        model = zoo_model(name)
        x = zoo_input(model, data)
        parts = [run(model, x[i:i + 100]) for i in range(0, len(x), 100)]
        tensors[f'{name}/logits'] = torch.cat([p[0] for p in parts])
        tensors[f'{name}/macs'] = torch.cat([p[1] for p in parts])
        names['zoo'].append(name)
    meta = dict(models=json.dumps(names), torch=torch.__version__, timm=__import__('timm').__version__)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT), metadata=meta)
    print(f'{OUT}: {len(names["test"])} test models, {len(names["zoo"])} zoo models')


def record_macs() -> None:
    """Re-records the MACs entries of the existing file from the current code (nothing else)."""
    from safetensors import safe_open
    with safe_open(str(OUT), framework='pt') as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    names = json.loads(meta['models'])
    changed = []
    for name in names['test']:
        model = test_model(name)
        model.load_state_dict({k[len(f'{name}/weights/'):]: v for k, v in tensors.items()
                               if k.startswith(f'{name}/weights/')})
        for mode, settings in {'eval': {}, 'threshold': dict(mode='threshold', threshold=0.5)}.items():
            if f'{name}/{mode}/macs' in tensors:
                model.set_sparsity(**settings)
                macs = run(model, tensors[f'{name}/input'])[1]
                changed += [f'{name}/{mode}'] if not torch.equal(macs, tensors[f'{name}/{mode}/macs']) else []
                tensors[f'{name}/{mode}/macs'] = macs
    data = np.load(SAMPLE)
    for name in names['zoo']:
        model = zoo_model(name)
        x = zoo_input(model, data)
        macs = torch.cat([run(model, x[i:i + 100])[1] for i in range(0, len(x), 100)])
        changed += [name] if not torch.equal(macs, tensors[f'{name}/macs']) else []
        tensors[f'{name}/macs'] = macs
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT), metadata=meta)
    print(f'{OUT}: MACs re-recorded; changed: {", ".join(changed) or "none"}')


if __name__ == '__main__':
    main()

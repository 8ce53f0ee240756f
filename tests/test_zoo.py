"""Every shipped weight file: loads offline by name, matches its card, and still reaches the
card's accuracy on a fixed sample of 500 Fashion-MNIST test images."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dynvit
from dynvit.data import model_transform
from dynvit.hub.zoo import WEIGHTS_DIR, read_card, renamed
from safetensors.torch import load_file

from numerics import assert_matches

FILES = sorted(WEIGHTS_DIR.glob('*.safetensors')) if WEIGHTS_DIR.is_dir() else []
SAMPLE = Path(__file__).parent / 'fixtures' / 'fashion_mnist_test500.npz'
REFERENCE = Path(__file__).parent / 'fixtures' / 'reference_outputs.safetensors'  # record_reference_outputs.py

@pytest.mark.numerics  # run again under other CPU kernels (README's test command)
@pytest.mark.parametrize('path', FILES, ids=[f.name for f in FILES])
def test_shipped_weights_match_their_card(path):
    name = path.name[:-len('.safetensors')]
    info = read_card(path)
    assert info['name'] == name and name in dynvit.list_models(pretrained=True)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info['sha256']
    model = dynvit.create_model(name, pretrained=True).eval()  # offline: the file beside the package
    meta = dynvit.read_dynvit_metadata(str(path))
    assert meta['model_args'] == info['model_args'] and meta['architecture'] == info['architecture']
    for k, v in model.sparsity_config().items():
        assert info['model_args'][k] == (list(v) if isinstance(v, tuple) else v)
    data = np.load(SAMPLE)
    tf = model_transform(model)
    x = torch.stack([tf(Image.fromarray(im)) for im in data['images']])
    if 'execution' in model.sparsity_config():
        model.set_sparsity(execution='grouped')  # as recorded (when 'auto' still timed the strategies)
    with torch.no_grad():
        parts = [model(x[i:i + 100], return_aux=True) for i in range(0, len(x), 100)]
    logits, macs = torch.cat([p[0] for p in parts]), torch.cat([p[1].macs for p in parts])
    correct = (logits.argmax(1).numpy() == data['labels']).sum()
    assert abs(correct / len(x) - info['sample500_top1']) <= 0.01
    # the outputs recorded (on another machine, perhaps) before the model protocol and the loading
    # layer came in: equal up to rounding, MACs exact, apart from images with a decision at a near tie
    reference = load_file(str(REFERENCE))
    assert_matches(model, x, logits, reference[f'{name}/logits'], name, [(macs, reference[f'{name}/macs'])])


@pytest.mark.parametrize('old', sorted(renamed()))
def test_old_zoo_names_load_their_renamed_files_with_a_warning(old):
    new = renamed()[old]
    assert (WEIGHTS_DIR / f'{new}.safetensors').is_file() and not (WEIGHTS_DIR / f'{old}.safetensors').exists()
    with pytest.warns(FutureWarning, match=f"'{old}' is the zoo's old name of '{new}'"):
        model = dynvit.create_model(old, pretrained=True)
    assert model.pretrained_cfg['file'] == str(WEIGHTS_DIR / f'{new}.safetensors')
    assert model.pretrained_cfg['architecture'] == new.split('.')[0]


def test_zoo_names_tell_the_geometry():
    vit = dynvit.create_model('dynamicvit_pico_patch4_28')  # no weights: the registered defaults
    assert (vit.patch_embed.img_size, vit.patch_embed.patch_size, vit.embed_dim, len(vit.blocks)) == \
        ((28, 28), (4, 4), 96, 6)
    for name in dynvit.list_models(pretrained=True):
        arch, tag = name.split('.')
        if tag.startswith('fmnist'):
            card = read_card(WEIGHTS_DIR / f'{name}.safetensors')
            size = card['input_size'][-1]
            assert arch.endswith(f'_{size}') or arch.startswith('fbs_'), name  # ViTs name their input size


def test_timm_and_dynvit_create_model_build_the_same_model_for_every_tag():
    """Both front doors apply a tag's arguments (an official checkpoint's settings, a zoo file's): every
    registered tag whose weights are local gives the same logits through ``timm.create_model`` and
    ``dynvit.create_model``; the others (weights to download) the same constructor and sparsity arguments."""
    import timm
    from timm.models import get_pretrained_cfg
    local, remote = [], []
    for name in dynvit.list_models(pretrained=True):
        file = get_pretrained_cfg(name).file
        (local if file and Path(file).is_file() else remote).append(name)
    assert len(local) == len(FILES) and remote
    for name in local:
        ours, theirs = (f(name, pretrained=True).eval() for f in (dynvit.create_model, timm.create_model))
        assert theirs.model_args == ours.model_args and theirs.sparsity_config() == ours.sparsity_config(), name
        x = torch.randn(2, *dynvit.model_input_size(ours), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(theirs(x), ours(x)), name
    with torch.device('meta'):  # no weights to download, no memory: the arguments say what is built
        for name in remote:
            ours, theirs = dynvit.create_model(name), timm.create_model(name)
            assert type(theirs) is type(ours) and theirs.model_args == ours.model_args, name
            assert theirs.sparsity_config() == ours.sparsity_config(), name


def test_zoo_pictures_label_every_model_apart_by_its_zoo_name(tmp_path):
    """docs/zoo_tradeoff.png: every sparse model's tag beside its point, no two labels overlapping;
    docs/zoo_curves.png: the lines named by the zoo's models (not the runs), a point below the scale
    explained."""
    pytest.importorskip('matplotlib')
    import importlib.util
    import itertools
    import json
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location('zoo_report', root / 'benchmarks' / 'zoo_report.py')
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    rows = json.loads((root / 'benchmarks' / 'results' / 'zoo_cpu.json').read_text())['rows']
    boxes = report.plot(rows, tmp_path / 'tradeoff.png')
    assert len(boxes) == sum(bool(r.get('dense')) for r in rows.values())
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    runs = report.shipped_runs()
    assert runs['vit_dyn05_13ep'] == 'dynamicvit_pico_patch4_28.fmnist_kr05'
    logs = root / 'benchmarks' / 'results' / 'zoo_curves'
    texts = report.plot_curves(logs, tmp_path / 'curves.png')
    shown = {runs[log.stem] for log in logs.glob('*.jsonl') if log.stem in runs}
    assert shown and shown <= set(texts)
    assert not any(log.stem in text for log in logs.glob('*.jsonl') for text in texts)  # no run names
    assert all('validated at' in t for t in texts if '(below the scale)' in t)

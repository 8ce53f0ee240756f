"""The README and the docs show what their commands and code print (issue 27, items 13-14): the
outputs are made by running them (``benchmarks/doc_outputs.py``), and the zoo's numbers come from
one measurement (cards, ``dynvit list``, the README table)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dynvit
from dynvit.hub.zoo import read_card

ROOT = Path(__file__).resolve().parents[1]


def test_every_shown_output_is_what_the_command_prints_now():
    """`dynvit list / info / predict` blocks, the demo (full and excerpt), the README's Python
    example (an image file prepared with ``model_transform``)."""
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'doc_outputs.py'), '--check'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]


def test_the_readme_python_example_prepares_an_image_file():
    readme = (ROOT / 'README.md').read_text()
    code = re.search(r'## Python example\n\n```python\n(.*?)```', readme, re.S).group(1)
    assert 'model_transform(model)(image)' in code and "load_image('" in code


def test_the_token_example_of_the_models_doc_shows_what_it_computes():
    text = (ROOT / 'docs' / 'models.md').read_text()
    import timm
    evit = dynvit.apply(timm.create_model('deit_small_patch16_224'), 'evit', keep_ratio=0.7).eval()
    with torch.no_grad():
        _, aux = evit(torch.randn(2, 3, 224, 224), return_aux=True)
    assert f'aux.kept[0]: {aux.kept[0].tolist()} patches' in text
    saved = 1 - aux.macs[0].item() / aux.dense_macs
    assert f'aux.macs                  # {aux.macs.tolist()} ({saved:.1%} saved)' in text


@pytest.mark.parametrize('name', [n for n in dynvit.list_models(pretrained=True) if '.fmnist_' in n])
def test_the_zoo_table_and_the_listing_give_the_cards_numbers(name):
    card = read_card(name)
    readme = (ROOT / 'README.md').read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f'| `{name}` |')).split(' | ')
    assert row[2] == f'{card["mean_macs"] / 1e6:.1f}', (name, row)
    saved = card['saved_fraction_vs_own_dense']
    assert row[3] == (f'{saved:.1%}' if saved > 0 else '–'), (name, row)
    from dynvit.hub.catalog import pretrained_info
    line = pretrained_info(name)['description']  # what `dynvit list --pretrained` prints
    assert f'{card["mean_macs"] / 1e6:.2f} MMACs/image' in line
    assert (f'{saved:.1%} saved' if saved > 0 else 'dense') in line

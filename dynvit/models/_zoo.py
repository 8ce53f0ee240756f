"""The zoo's shipped weights: ``weights/<arch>.<tag>.safetensors`` (beside the package in a checkout,
under ``<prefix>/share/dynvit/weights`` in a wheel install).

Each file is a self-describing dynvit file (architecture, model arguments with the sparsity
settings, data config). The model modules register a pretrained cfg ``arch.tag`` for every file
present, with ``file`` pointing at it, so ``create_model('arch.tag', pretrained=True)`` loads it
offline; its model arguments come from the file (``_factory.create_model``).
"""
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict

from safetensors import safe_open

__all__ = ['TAG_ARGS', 'WEIGHTS_DIR', 'read_card', 'register_tag_args', 'shipped_cfgs']



def _weights_dir() -> Path:
    """``$DYNVIT_WEIGHTS``, else ``weights/`` of the checkout (editable install), else where a wheel
    puts them (``<prefix>/share/dynvit/weights``)."""
    if os.environ.get('DYNVIT_WEIGHTS'):
        return Path(os.environ['DYNVIT_WEIGHTS'])
    checkout = Path(__file__).resolve().parents[2] / 'weights'
    return checkout if checkout.is_dir() else Path(sys.prefix) / 'share' / 'dynvit' / 'weights'


WEIGHTS_DIR = _weights_dir()


def shipped_cfgs(arch: str, make_cfg: Callable[..., Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """``{'arch.tag': cfg}`` for every ``weights/arch.tag.safetensors``, the cfg built by ``make_cfg``
    with the file's data config (classes, input size, mean, std, ...) and ``file`` set."""
    out = {}
    if not WEIGHTS_DIR.is_dir():
        return out
    for path in sorted(WEIGHTS_DIR.glob(f'{arch}.*.safetensors')):
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
        if meta.get('architecture') != arch:
            continue
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(meta.get('pretrained_cfg', '{}')).items()}
        out[path.name[:-len('.safetensors')]] = make_cfg(file=str(path), **data)
    return out


def read_card(weights_file: Path) -> Dict[str, Any]:
    """The JSON block of the card ``weights/<name>.md`` beside ``weights/<name>.safetensors``."""
    text = Path(str(weights_file)[:-len('.safetensors')] + '.md').read_text()
    return json.loads(re.search(r'```json\n(.*?)\n```', text, re.S).group(1))


# Model arguments that pretrained tags were trained with when their files do not say (the official
# DynamicViT / Evo-ViT checkpoints store no sparsity settings): create_model('arch.tag') applies them.
TAG_ARGS: Dict[str, Dict[str, Any]] = {}


def register_tag_args(tagged: Dict[str, Dict[str, Any]]) -> None:
    """Records ``{'arch.tag': model arguments}`` for ``create_model``."""
    TAG_ARGS.update(tagged)

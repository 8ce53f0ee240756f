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
import warnings
from pathlib import Path
from typing import Any, Callable, Dict

from safetensors import safe_open

__all__ = ['RENAMED', 'TAG_ARGS', 'WEIGHTS_DIR', 'current_name', 'read_card', 'register_tag_args', 'shipped_cfgs']



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
    with the file's data config (classes, input size, mean, std, ...) and ``file`` set. Sparse tags
    come first (timm's default tag is the first), ``*_dense`` ones last."""
    out = {}
    if not WEIGHTS_DIR.is_dir():
        return out
    for path in sorted(WEIGHTS_DIR.glob(f'{arch}.*.safetensors'), key=lambda p: (p.stem.endswith('_dense'), p.name)):
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


# Zoo names of dynvit 0.1, which named the architecture the zoo's models were built from, not their
# geometry (a 96-wide, 6-block, patch-4, 28-px ViT was "tiny_patch16_224"). They load for one more
# release, with a FutureWarning; then they go.
_ZOO_VIT_TAGS = {
    'dynamicvit': ('fmnist_dense', 'fmnist_kr05', 'fmnist_kr065'), 'evovit': ('fmnist_kr05',),
    'evit': ('fmnist_kr07',), 'tome': ('fmnist_r4', 'fmnist_r8'),
}
RENAMED: Dict[str, str] = {
    **{f'{family}_tiny_patch16_224.{tag}': f'{family}_pico_patch4_28.{tag}'
       for family, tags in _ZOO_VIT_TAGS.items() for tag in tags},
    **{f'fbs_resnet18.{tag}': f'fbs_resnet18_half.{tag}' for tag in ('fmnist_dense', 'fmnist_d50')},
}


def current_name(model_name: str) -> str:
    """``model_name``, or the zoo's current name for a renamed one (with a FutureWarning)."""
    prefix, _, name = model_name.rpartition(':')  # 'hf-hub:' style prefixes pass through
    new = RENAMED.get(name)
    if new is None:
        return model_name
    warnings.warn(f"{name!r} is the zoo's old name of {new!r} (named for its real geometry) and goes in "
                  f'dynvit 0.3: use {new!r}', FutureWarning, stacklevel=3)
    return f'{prefix}:{new}' if prefix else new

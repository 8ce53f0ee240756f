"""Pretrained tags: the model arguments a tag's weights were made with, and the zoo's tags.

A pretrained tag names weights, and weights were made with certain sparsity settings: the official
checkpoints store none (their families record what they were trained with, ``register_tag_args``),
the zoo's files record theirs in the zoo's index. ``tag_args`` gives them to the builder, which
timm calls with the tag (``timm.create_model('arch.tag')`` passes it as ``pretrained_cfg``), so
timm's and dynvit's ``create_model`` build the same model for every tag.

The zoo: ``weights/<arch>.<tag>.safetensors`` beside the package in a checkout, under
``<prefix>/share/dynvit/weights`` in a wheel install, and ``weights/zoo.json``, its index (each
file's data config and model arguments, written when a file is shipped: ``dynvit.hub.zoo``).
The model modules register a pretrained cfg ``arch.tag`` for every entry (``zoo_cfgs``), with
``file`` pointing at its weights, so ``create_model('arch.tag', pretrained=True)`` loads it offline.
"""
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional

__all__ = ['WEIGHTS_DIR', 'register_tag_args', 'tag_args', 'with_tag_args', 'zoo_cfgs', 'zoo_index']


def _weights_dir() -> Path:
    """``$DYNVIT_WEIGHTS``, else ``weights/`` of the checkout (editable install), else where a wheel
    puts them (``<prefix>/share/dynvit/weights``)."""
    if os.environ.get('DYNVIT_WEIGHTS'):
        return Path(os.environ['DYNVIT_WEIGHTS'])
    checkout = Path(__file__).resolve().parents[2] / 'weights'
    return checkout if checkout.is_dir() else Path(sys.prefix) / 'share' / 'dynvit' / 'weights'


WEIGHTS_DIR = _weights_dir()
ZOO_INDEX = 'zoo.json'


_INDEX_CACHE: Dict[str, Any] = {}


def zoo_index() -> Dict[str, Any]:
    """The zoo's index: ``models``, ``{'arch.tag': {'pretrained_cfg': ..., 'model_args': ...}}`` of
    its files, and ``renamed`` (see ``dynvit.hub.zoo``); empty when the weights are not installed.
    Read again when the file changes."""
    path = WEIGHTS_DIR / ZOO_INDEX
    if not path.is_file():
        return {}
    stamp = path.stat().st_mtime_ns
    if _INDEX_CACHE.get('stamp') != stamp:
        _INDEX_CACHE.update(stamp=stamp, index=json.loads(path.read_text()))
    return _INDEX_CACHE['index']


def zoo_cfgs(arch: str, make_cfg: Callable[..., Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """``{'arch.tag': cfg}`` for every zoo file of ``arch`` whose weights are present, each built by
    ``make_cfg`` with the file's data config (classes, input size, mean, std, ...) and ``file`` set.
    Sparse tags come first (timm's default tag is the first), ``*_dense`` ones last."""
    out = {}
    entries = [(name, e) for name, e in zoo_index().get('models', {}).items() if name.split('.')[0] == arch]
    for name, entry in sorted(entries, key=lambda item: (item[0].endswith('_dense'), item[0])):
        path = WEIGHTS_DIR / f'{name}.safetensors'
        if path.is_file():
            data = {k: tuple(v) if isinstance(v, list) else v for k, v in entry['pretrained_cfg'].items()}
            out[name] = make_cfg(file=str(path), **data)
    return out


# {'arch.tag': model arguments} of the official tags (their files store no settings)
_TAG_ARGS: Dict[str, Dict[str, Any]] = {}


def register_tag_args(tagged: Dict[str, Dict[str, Any]]) -> None:
    """Records ``{'arch.tag': model arguments}``: what those weights were trained with."""
    _TAG_ARGS.update(tagged)


def tag_args(variant: str, pretrained_cfg: Any, pretrained: bool) -> Dict[str, Any]:
    """The model arguments of the tag a model is built for: the tag named (``pretrained_cfg``, as
    timm passes it to an entrypoint), or with ``pretrained`` and no tag the architecture's default
    tag, whose weights then load. Empty for a tag without recorded arguments."""
    tag: Optional[str] = pretrained_cfg if isinstance(pretrained_cfg, str) else None
    if tag is None and pretrained_cfg is None and pretrained:
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(variant)
        tag = getattr(cfg, 'tag', None)
    if not tag:
        return {}
    name = f'{variant}.{tag}'
    zoo = zoo_index().get('models', {}).get(name)
    return dict(zoo['model_args']) if zoo else dict(_TAG_ARGS.get(name, {}))


def with_tag_args(variant: str, model_args: Dict[str, Any], pretrained: bool, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """A variant's arguments: its own ``model_args``, then its tag's (``tag_args``), then the caller's ``kwargs``."""
    return {**model_args, **tag_args(variant, kwargs.get('pretrained_cfg'), pretrained), **kwargs}

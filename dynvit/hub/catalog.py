"""What a pretrained tag offers: weights shipped with the package (described by the zoo's card) or
downloaded (already cached or not), with a one-line description. ``dynvit list --pretrained`` prints it."""
import os
from pathlib import Path
from typing import Any, Dict, Optional

from timm.models import get_pretrained_cfg

from .downloads import cached_weights, download_source
from .zoo import read_card

__all__ = ['pretrained_info']


def pretrained_info(model_name: str) -> Dict[str, Any]:
    """Where the weights of ``arch.tag`` come from and what they are.

    Args:
        model_name: A name ``list_models(pretrained=True)`` gives.

    Returns:
        ``name``; ``weights``: ``'shipped'`` (a file of the package, loads offline), ``'cached'``
        (downloaded before, loads offline), ``'download'`` (fetched on first use), ``'missing'``
        (a shipped file absent from this installation) or ``'none'``; ``source`` (the file or the
        URL); ``description`` (one line); and from the zoo's card, else None: ``dataset``,
        ``top1`` / ``top5`` (test accuracy, fractions), ``macs`` (mean MACs per image) and
        ``saved_fraction`` (of the MACs of the same network without sparsity).
    """
    cfg = get_pretrained_cfg(model_name).to_dict()
    file, card = cfg.get('file') or '', {}
    if file:
        weights, source = ('shipped' if os.path.isfile(file) else 'missing'), file
        card = _card(file) or {}
    else:
        source = download_source(cfg)
        weights = 'none' if not source else 'cached' if cached_weights(cfg, model_name) else 'download'
    return dict(name=model_name, weights=weights, source=source,
                description=_card_line(card) or _notes_line(cfg, source),
                dataset=card.get('dataset'), top1=card.get('test_top1'), top5=card.get('test_top5'),
                macs=card.get('mean_macs'), saved_fraction=card.get('saved_fraction_vs_own_dense'))


def _card(weights_file: str) -> Optional[Dict[str, Any]]:
    """The zoo card of a shipped file, or None where the file has no card beside it."""
    return read_card(Path(weights_file)) if os.path.isfile(weights_file[:-len('.safetensors')] + '.md') else None


def _card_line(card: Dict[str, Any]) -> str:
    """'Fashion-MNIST test top-1 88.01%, 19.16 MMACs/image, 50.4% saved' from a card, '' without one."""
    if card.get('test_top1') is None:
        return ''
    dataset = card.get('dataset')
    text = f'{dataset + " " if dataset else ""}test top-1 {card["test_top1"]:.2%}'
    if card.get('mean_macs') is not None:
        text += f', {card["mean_macs"] / 1e6:.2f} MMACs/image'
    saved = card.get('saved_fraction_vs_own_dense')
    if saved is not None:
        text += f', {saved:.1%} saved' if saved > 0 else ', dense (sparsity off)'
    return text


def _notes_line(cfg: Dict[str, Any], source: str) -> str:
    """The first note of a pretrained cfg, else where its weights come from."""
    notes = cfg.get('notes') or ()
    if notes:
        return notes[0]
    return f'weights from {source}' if source else 'no weights (random initialisation)'

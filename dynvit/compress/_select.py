"""Which layers pruning acts on: by group (classifier, patch embedding, keep predictors, gates) or by name pattern."""
import fnmatch
from typing import Callable, Dict, Sequence, Tuple, Union

import torch.nn as nn

from ..layers.channel_gate import ChannelGate
from ..layers.keep_predictor import KeepPredictor
from ._masks import _pruning_hooks

__all__ = ['GROUPS', 'Include', 'prunable_layers', 'masked_layers']

Include = Union[None, str, Sequence[str], Callable[[str, nn.Module], bool]]

# include keywords (everything else is an fnmatch pattern over module names)
GROUPS = ('default', 'all', 'head', 'embed', 'predictor', 'gate')
_CLASSIFIER_NAMES = ('head', 'head_cls', 'head_dist', 'fc', 'classifier')


def _is_weight_layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, nn.Conv2d))


def _group_prefixes(model: nn.Module) -> Dict[str, Tuple[str, ...]]:
    """Module-name prefixes (with a trailing dot) of the groups that are not pruned by default."""
    predictor, gate, embed = [], [], []
    for name, m in model.named_modules():
        if isinstance(m, KeepPredictor):
            predictor.append(name + '.')
        elif isinstance(m, ChannelGate):
            gate.append(name + '.')
        elif name.split('.')[-1] == 'patch_embed':
            embed.append(name + '.')
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classifier = cfg.get('classifier') or ()
    classifier = {classifier} if isinstance(classifier, str) else set(classifier)
    children = dict(model.named_children())
    classifier |= {n for n in _CLASSIFIER_NAMES if n in children}
    head = [n + '.' for n in sorted(classifier)]
    return dict(head=tuple(head), embed=tuple(embed), predictor=tuple(predictor), gate=tuple(gate))


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` names the module or one of its ancestors (fnmatch wildcards allowed)."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + '.*')


def prunable_layers(model: nn.Module, include: Include = None, exclude: Include = None) -> Dict[str, nn.Module]:
    """The ``nn.Linear`` / ``nn.Conv2d`` layers that magnitude pruning acts on, by name.

    By default (``include=None`` or ``'default'``) every such layer except the classifier(s)
    (``head``, ``head_cls``, ``fc``, ...), the patch embedding and the model's sparse modules
    (keep predictors, channel gates: ``sparse_modules()``): for a ViT the linears of the
    transformer blocks, for a CNN its convolutions.

    Args:
        model: Any model.
        include: What to select: None for the default, or a name / a sequence of names, each a
            group (``'default'``, ``'all'``, ``'head'``, ``'embed'``, ``'predictor'``, ``'gate'``)
            or an fnmatch pattern over module names that also selects the layers below a matching
            module (``'blocks.0'``, ``'*.mlp.*'``); or a callable ``(name, module) -> bool``.
            ``('default', 'head')`` adds the classifier to the default.
        exclude: The same forms; layers it selects are left out.

    Returns:
        ``{name: layer}`` in model order.
    """
    layers = {n: m for n, m in model.named_modules() if _is_weight_layer(m)}
    prefixes = _group_prefixes(model)
    special = sum(prefixes.values(), ())

    def selector(spec: Include, default: bool) -> Callable[[str, nn.Module], bool]:
        if spec is None:
            return (lambda n, m: not (n + '.').startswith(special)) if default else (lambda n, m: False)
        if callable(spec):
            return spec
        specs = [spec] if isinstance(spec, str) else list(spec)
        tests = []
        for s in specs:
            if s == 'default':
                tests.append(lambda n, m: not (n + '.').startswith(special))
            elif s == 'all':
                tests.append(lambda n, m: True)
            elif s in prefixes:
                tests.append(lambda n, m, p=prefixes[s]: (n + '.').startswith(p))
            else:
                tests.append(lambda n, m, p=s: _matches(n, p))
        return lambda n, m: any(t(n, m) for t in tests)

    inc, exc = selector(include, True), selector(exclude, False)
    return {n: m for n, m in layers.items() if inc(n, m) and not exc(n, m)}


def masked_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The layers that carry a pruning mask (``weight_orig`` / ``weight_mask``), by name."""
    return {n: m for n, m in model.named_modules() if _pruning_hooks(m)}

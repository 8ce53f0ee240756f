"""Checks, forward steps and checkpoint helpers shared by the model families."""
import numbers
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import PatchEmbed
from timm.models import build_model_with_cfg
from timm.models._manipulate import adapt_input_conv, checkpoint

from ..layers import ConvPatchEmbed
from ._tags import with_tag_args


def is_scalar(value: Any) -> bool:
    """A real number or a 0-d tensor (as opposed to a per-stage sequence)."""
    return isinstance(value, numbers.Real) or (isinstance(value, torch.Tensor) and value.ndim == 0)


def check_image_batch(x: torch.Tensor, in_chans: int, img_size: Union[None, Sequence[int]]) -> None:
    """Raises a ValueError naming the problem when ``x`` is not a valid image batch.

    Args:
        x: The model input.
        in_chans: Channels the model expects.
        img_size: ``(H, W)`` the model requires, or None when any size is accepted.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'expected an image batch tensor [B, C, H, W], got {type(x).__name__}')
    if x.ndim != 4:
        raise ValueError(f'expected an image batch [B, C, H, W], got a tensor of shape {tuple(x.shape)}')
    if x.shape[0] == 0:
        raise ValueError('got an empty batch (0 images)')
    if not x.is_floating_point():
        raise ValueError(f'expected a floating-point image batch (normalised as the model\'s data config says), '
                         f'got dtype {x.dtype}')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'expected {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}); '
            f'create the model with in_chans={x.shape[1]} or convert the images')
    if img_size is not None and tuple(x.shape[-2:]) != tuple(img_size):
        raise ValueError(
            f'expected images of size {tuple(img_size)}, got {tuple(x.shape[-2:])}; resize the input, or create '
            f'the model with img_size={tuple(x.shape[-2:])} or dynamic_img_size=True')


def vit_cfg(url: str = '', spec: Any = None, **kwargs: Any) -> Dict[str, Any]:
    """Pretrained cfg of a DeiT-style ViT: 224 px ImageNet defaults, the paper of the family's
    ``spec`` (a ``FamilySpec``), overridden by ``kwargs``."""
    paper = {} if spec is None else {'paper_ids': spec.paper_ids, 'paper_name': spec.paper_name}
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        **paper,
        **kwargs,
    }


def vit_embed_layer(stem: str) -> type:
    """The patch embedding of a ViT ``stem`` name: 'patch' (timm's ``PatchEmbed``, one patchify
    convolution) or 'conv' (``ConvPatchEmbed``, stride-2 3x3 convolutions, arXiv:2106.14881)."""
    stems = {'patch': PatchEmbed, 'conv': ConvPatchEmbed}
    if stem not in stems:
        raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
    return stems[stem]


def with_stem_cfg(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``kwargs`` whose pretrained-cfg overlay names the convolutional stem's first conv as the
    input conv (timm adapts its channels when a checkpoint has another ``in_chans``)."""
    if kwargs.get('stem') != 'conv':
        return kwargs
    overlay = {'first_conv': 'patch_embed.proj.0', **(kwargs.get('pretrained_cfg_overlay') or {})}
    return {**kwargs, 'pretrained_cfg_overlay': overlay}


def embed_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Checks the images and runs a timm ``VisionTransformer``'s embedding steps.

    Args:
        model: The ViT.
        x: Images ``[B, C, H, W]``.

    Returns:
        Tokens ``[B, P + N, C]``, prefix (class, register) tokens first.
    """
    check_image_batch(x, model.in_chans, None if model.dynamic_img_size else model.patch_embed.img_size)
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def run_block(model: nn.Module, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, through activation checkpointing when the model has it on."""
    if model.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
        return checkpoint(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def model_input_size(model: nn.Module) -> Tuple[int, int, int]:
    """``(channels, height, width)`` the model takes: channels from its first convolution, the size
    from its patch embedding (ViTs) or else its pretrained cfg."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    c, h, w = cfg.get('input_size') or (3, 224, 224)
    patch_embed = getattr(model, 'patch_embed', None)
    if patch_embed is not None and getattr(patch_embed, 'img_size', None) is not None:
        h, w = patch_embed.img_size
    first = cfg.get('first_conv')
    first = first[0] if isinstance(first, (tuple, list)) else first
    try:
        c = model.get_submodule(first).in_channels if first else getattr(model, 'in_chans', c)
    except AttributeError:
        c = getattr(model, 'in_chans', c)
    return int(c), int(h), int(w)


def build_dynamic_model(model_cls: type, variant: str, pretrained: bool, filter_fn: Callable[..., Any],
                        no_features_why: str, model_args: Optional[Dict[str, Any]], **kwargs: Any) -> nn.Module:
    """timm's ``build_model_with_cfg`` with the family's checkpoint filter, the variant's
    ``model_args`` under its pretrained tag's arguments under the caller's ``kwargs``
    (``with_tag_args``; None: ``kwargs`` are complete); ``features_only`` (timm's
    feature-extraction wrapper) is refused with ``no_features_why``."""
    if model_args is not None:
        kwargs = with_tag_args(variant, model_args, pretrained, kwargs)
    if kwargs.get('features_only'):
        raise ValueError(f'features_only is not supported: {no_features_why}')
    return build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=filter_fn, **kwargs)


def first_conv_keys(model: nn.Module) -> Tuple[str, ...]:
    """Weight keys of the model's input convolution(s), from its pretrained cfg."""
    convs = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv') or ()
    return tuple(f'{c}.weight' for c in ((convs,) if isinstance(convs, str) else convs))


def adapt_input_channels(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Adapts the first conv of a checkpoint to the model's input channels, as timm's pretrained loading does."""
    own = model.state_dict()
    for key in first_conv_keys(model):
        w = state_dict.get(key)
        if w is not None and key in own and w.ndim == 4 and w.shape[1] != own[key].shape[1]:
            state_dict[key] = adapt_input_conv(own[key].shape[1], w)
    return state_dict


def fill_missing(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        prefixes: Iterable[str],
) -> Dict[str, torch.Tensor]:
    """Adds the model's own (fresh) tensors for keys under ``prefixes`` that ``state_dict`` lacks."""
    prefixes = tuple(prefixes)
    for k, v in model.state_dict().items():
        if k.startswith(prefixes) and k not in state_dict:
            state_dict[k] = v
    return state_dict


def check_state_dict(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        ignore: Tuple[str, ...] = (),
        what: str = 'checkpoint',
        any_shape: Tuple[str, ...] = (),
) -> None:
    """Raises a ValueError listing missing, unexpected and wrongly shaped keys.

    Args:
        state_dict: Tensors to load.
        model: Target model.
        ignore: Key prefixes whose absence or shape is left to the caller (e.g. a classifier
            that timm drops when ``num_classes`` changes).
        what: How to call the source in the message.
        any_shape: Keys that must be present but whose shape is adapted later (e.g. the first
            conv, whose input channels timm adapts).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(ignore)]
    unexpected = [k for k in state_dict if k not in own and not k.startswith(ignore)]
    shapes = [
        f'{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
        for k in own
        if k in state_dict and not k.startswith(ignore) and k not in any_shape
        and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return

    def _fmt(items, n=8):
        return ', '.join(items[:n]) + (f' ... (+{len(items) - n} more)' if len(items) > n else '')

    parts = []
    if missing:
        parts.append(f'{len(missing)} missing: {_fmt(missing)}')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected: {_fmt(unexpected)}')
    if shapes:
        parts.append(f'{len(shapes)} with other shapes: {_fmt(shapes, 4)}')
    raise ValueError(
        f'{what} does not match {type(model).__name__}: ' + '; '.join(parts)
        + '. Is it for another architecture or configuration?')

"""``create_model`` / ``list_models`` / ``load_model`` mirroring timm's, with clear errors for unknown
names and offline-friendly downloads (``downloads``). A dynvit file is loaded one way: as the
``file`` of a pretrained cfg, so timm's classifier reset and input-channel adaptation apply."""
import difflib
import os
import sys
from typing import Any, Dict, List, Optional, Tuple, Union

import timm
import torch.nn as nn
from timm.models import get_pretrained_cfg, model_entrypoint, parse_model_name, split_model_name_tag

from ..compress.saving import STRUCTURE_KEY, apply_structure
from ..models import all_sparsity_args, model_input_size
from .downloads import (
    PretrainedWeightsError,
    cached_weights,
    download_source,
    download_to_cache,
    has_file_name,
    offline_reason,
)
from .files import load_checkpoint, mark_untrained, read_dynvit_metadata, read_state_dict
from .zoo import current_name


def _is_dynvit(arch: str) -> bool:
    return timm.is_model(arch) and model_entrypoint(arch).__module__.startswith('dynvit.')


def list_models(filter: Union[str, List[str]] = '', pretrained: bool = False, **kwargs: Any) -> List[str]:
    """Names of dynvit's registered models, as ``timm.list_models`` gives them.

    Args:
        filter: Wildcard pattern(s), e.g. ``'*_patch16_224'``.
        pretrained: List ``arch.tag`` names that have pretrained weight configs.
        **kwargs: Passed to ``timm.list_models``.
    """
    names = timm.list_models(filter, pretrained=pretrained, **kwargs)
    return [n for n in names if _is_dynvit(split_model_name_tag(n)[0])]


def _unknown_model(name: str) -> ValueError:
    ours = list_models() + list_models(pretrained=True)
    close = difflib.get_close_matches(name, ours, n=5, cutoff=0.5)
    close += [n for n in difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.75) if n not in close]
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    return ValueError(f'unknown model {name!r}{hint} (`dynvit list` shows the dynvit models)')


def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Creates a model by name like ``timm.create_model`` (any timm model name works too).

    A dynvit safetensors file given as ``pretrained_cfg_overlay=dict(file=...)`` (or
    ``checkpoint_path=``) is self-describing: the model arguments stored in it (sparsity
    configuration, number of classes, ...) are used unless given here. ``checkpoint_path``
    goes through the model's ``checkpoint_filter_fn`` (unlike in timm), so a dense ViT
    checkpoint loads into a dynvit model's backbone there too.

    Downloaded weights (``hf_hub_id`` / ``url``) are fetched by timm as usual when the network is
    there. Without it (or with ``HF_HUB_OFFLINE=1``) a copy in the caches loads, and with none
    this fails at once with a ``PretrainedWeightsError`` naming the source (``dynvit.hub.downloads``).

    Args:
        model_name: ``arch`` or ``arch.tag``.
        pretrained: Load the pretrained weights of the config (local ``file`` first, as in timm).
        **kwargs: Passed to ``timm.create_model`` and on to the model.
    """
    model_name = current_name(model_name)
    _, arch = parse_model_name(model_name)
    arch, tag = split_model_name_tag(arch)
    if not timm.is_model(arch):
        raise _unknown_model(model_name)
    tags = timm.list_pretrained(f'{arch}.*')
    if tag and f'{arch}.{tag}' not in tags:
        close = difflib.get_close_matches(f'{arch}.{tag}', tags, n=3, cutoff=0.5)
        hint = f'did you mean {", ".join(close)}?' if close else f'its tags: {", ".join(tags) or "none"}'
        raise ValueError(f'{arch} has no pretrained tag {tag!r}; {hint} (`dynvit list {arch} --pretrained`)')
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    source = ''  # where timm downloads the weights from, if it does
    if pretrained and not overlay.get('file'):
        source, file = _weights_to_fetch(model_name, overlay, kwargs.get('cache_dir'))
        if file:
            overlay['file'] = file
    structure = None  # per-block sizes of a structurally pruned file (dynvit.compress)
    foreign = None  # (file, architecture) of a dynvit file written for another architecture
    file_meta = None  # the metadata of the dynvit file whose weights the model keeps
    for f in (overlay.get('file') if pretrained else None, kwargs.get('checkpoint_path')):
        if not f:
            continue
        if not os.path.isfile(f):
            raise FileNotFoundError(f'checkpoint file not found: {f}')
        meta = read_dynvit_metadata(f)
        if meta is not None:
            stored = meta['model_args']
            if meta.get('architecture') != arch:  # e.g. a dense file of another family as a backbone
                foreign = (f, meta.get('architecture'))
                sparsity_args = all_sparsity_args()
                stored = {k: v for k, v in stored.items() if k not in sparsity_args}
            kwargs = {**stored, **kwargs}  # the caller's arguments first, then what the file stores
            if f == overlay.get('file'):  # the file's data config and classes describe these weights
                overlay = {**meta['pretrained_cfg'], **overlay}
                file_meta = meta
            structure = (meta.get('extra') or {}).get(STRUCTURE_KEY) or structure
    if pretrained and overlay.get('file'):
        # read and validate the file here; timm then loads the tensors (classifier reset,
        # input-channel adaptation and our checkpoint filter included)
        # the official repositories evaluate ckpt['model'] even where the file also holds an EMA copy
        overlay['state_dict'] = read_state_dict(overlay['file'], use_ema=not _is_official(model_name))
    if overlay:
        kwargs['pretrained_cfg_overlay'] = overlay
    checkpoint_path = kwargs.pop('checkpoint_path', None)
    if checkpoint_path:  # its weights load last (load_checkpoint applies its file's word)
        file_meta = None
    try:
        if structure:  # timm would load into the constructor's uniform blocks: shrink them first
            return mark_untrained(_create_pruned(model_name, pretrained, structure, checkpoint_path, kwargs),
                                  file_meta)
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except OSError as e:  # download failures (unknown file, network lost) are OSErrors in timm and huggingface_hub
        if not source:
            raise
        raise PretrainedWeightsError(f'could not fetch the pretrained weights of {model_name} '
                                     f'({type(e).__name__}: {str(e).splitlines()[0]})', model_name, source) from None
    except (TypeError, RuntimeError) as e:  # arguments or tensors of another architecture
        if foreign is None:
            raise
        raise ValueError(f'{foreign[0]} holds a {foreign[1]} model, which {arch} cannot be built from '
                         f'({str(e).splitlines()[0]}); give {arch} a checkpoint of its own architecture or '
                         f'of its dense backbone') from None
    cfg = getattr(model, 'pretrained_cfg', None)
    if isinstance(cfg, dict) and cfg.get('state_dict') is not None:
        cfg.pop('state_dict')  # loaded; do not keep a second copy of the weights alive
    model = mark_untrained(model, file_meta)
    return load_checkpoint(model, checkpoint_path) if checkpoint_path else model


def load_model(path: str, **kwargs: Any) -> nn.Module:
    """Rebuilds a model saved by ``save_model`` or ``save_pruned`` (shrunk to its stored per-block
    sizes): ``create_model`` of the file's architecture with the file as its pretrained weights.

    Args:
        path: A dynvit ``.safetensors`` file.
        **kwargs: Override stored model arguments (a new ``num_classes`` resets the classifier, as in timm).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'model file not found: {path}')
    meta = read_dynvit_metadata(path)
    if meta is None:
        raise ValueError(f'{path} has no dynvit metadata; load it with create_model(arch, checkpoint_path=...)')
    overlay = {**(kwargs.pop('pretrained_cfg_overlay', None) or {}), 'file': str(path)}
    return create_model(meta['architecture'], pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def _create_pruned(model_name: str, pretrained: bool, structure: Dict[str, Any], checkpoint_path: Optional[str],
                   kwargs: Dict[str, Any]) -> nn.Module:
    """``create_model`` for a structurally pruned file: built, shrunk to ``structure``, then loaded
    the timm way (classifier reset when the classes differ, input channels adapted)."""
    from timm.models._builder import load_pretrained

    model = apply_structure(timm.create_model(model_name, pretrained=False, **kwargs), structure)
    if pretrained:
        cfg = model.pretrained_cfg
        load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes,
                        in_chans=model_input_size(model)[0],
                        filter_fn=getattr(sys.modules[type(model).__module__], 'checkpoint_filter_fn', None))
        cfg.pop('state_dict', None)
    return load_checkpoint(model, checkpoint_path) if checkpoint_path else model


def _is_official(model_name: str) -> bool:
    return split_model_name_tag(model_name)[1].startswith('official')


def _weights_to_fetch(model_name: str, overlay: Dict[str, Any], cache_dir: Optional[str]) -> Tuple[str, str]:
    """``(source, file)`` for the pretrained weights of ``model_name`` under ``overlay``: the URL timm
    will download them from, or the local file to load instead (at most one is set). The file is
    the shipped one (zoo), a cached copy when there is no network (``downloads.offline_reason``),
    or a share link's download.

    Raises:
        PretrainedWeightsError: Offline, and no copy is cached.
    """
    shipped = _shipped_file(model_name)
    if shipped:  # weights shipped with the package: self-describing like any dynvit file
        return '', shipped
    registered = get_pretrained_cfg(model_name)
    cfg = {**(registered.to_dict() if registered is not None else {}), **overlay}
    source = download_source(cfg)
    if not source:
        return '', ''
    why = offline_reason(source)
    if why:
        cached = cached_weights(cfg, model_name, cache_dir)
        if not cached:
            raise PretrainedWeightsError(f'could not fetch the pretrained weights of {model_name}: {why}, and no '
                                         f'downloaded copy is cached', model_name, source)
        return '', cached
    if source == cfg.get('url') and not has_file_name(source):  # share links: timm would cache them all under one name
        return '', download_to_cache(source, model_name, cache_dir)
    return source, ''


def _shipped_file(model_name: str) -> str:
    """The local ``file`` of ``arch.tag``'s pretrained cfg (weights shipped in ``weights/``), or ''."""
    cfg = get_pretrained_cfg(model_name)
    path = getattr(cfg, 'file', None) or ''
    if path and not os.path.isfile(path):
        raise PretrainedWeightsError(f'{model_name}: its weights file {path} is not in this installation; '
                                     f'install dynvit from the repository (pip install -e .) to get weights/')
    return path

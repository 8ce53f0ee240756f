"""Self-describing safetensors files: weights plus the architecture and sparsity config; reading any
checkpoint safely; loading one through the family's ``checkpoint_filter_fn``."""
import contextlib
import copy
import json
import os
import sys
import tempfile
from typing import Any, Dict, Iterator, Optional, Union

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from timm.models._helpers import clean_state_dict

from ..compress import detach_masked_weights, is_quantized, masked_layers, pruned_structure, remove_masks, sparsity
from ..compress.saving import STRUCTURE_KEY
from ..models import adapt_input_channels, check_state_dict, model_input_size

FORMAT = 'dynvit'
UNTRAINED_KEY = 'untrained_sparse'  # metadata: why the file's sparse modules are untrained (absent: trained)
_CFG_KEYS = ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation', 'num_classes', 'label_names')


def read_dynvit_metadata(path: str) -> Optional[Dict[str, Any]]:
    """The dynvit metadata of a safetensors file (architecture, model_args, pretrained_cfg, ...),
    None for other files (``.pth``, or safetensors written by other tools)."""
    if not str(path).endswith('.safetensors'):
        return None
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ValueError(f'{path} is not a readable safetensors file: {e}') from None
    if meta.get('format') != FORMAT:
        return None
    out: Dict[str, Any] = dict(meta)
    for key in ('model_args', 'pretrained_cfg', 'extra'):
        out[key] = json.loads(meta.get(key, '{}'))
    return out


STORAGE_DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def save_model(model: nn.Module, path: str, extra: Optional[Dict[str, Any]] = None,
               dtype: Optional[Union[str, torch.dtype]] = None) -> None:
    """Writes ``model`` to a self-describing safetensors file, atomically.

    The metadata holds the architecture name, every constructor argument with the *current*
    sparsity settings, and the data config (input size, mean, std, ...), so ``load_model`` or
    ``create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=path))`` rebuilds it;
    and, when its keep predictors / gates were never trained, why (``untrained_sparse``).

    Args:
        model: A dynvit model (has ``model_args`` and ``sparsity_config``).
        path: Target ``.safetensors`` path.
        extra: More JSON-serialisable metadata (class names, training info, ...).
        dtype: Storage precision of the floating-point tensors: 'fp32', 'fp16' or 'bf16' (or the
            torch dtype); None keeps the model's. Loading casts them back to the model's dtype.
    """
    if isinstance(dtype, str):
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f'dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}')
        dtype = STORAGE_DTYPES[dtype]
    if dtype is not None and dtype not in STORAGE_DTYPES.values():
        raise ValueError(f'dtype must be float32, float16 or bfloat16, got {dtype}')
    if not hasattr(model, 'sparsity_config'):
        raise TypeError(f'{type(model).__name__} is not a dynvit model; save its state_dict with safetensors directly')
    if not hasattr(model, 'model_args'):  # e.g. a method applied in place to a timm model (dynvit.apply)
        raise TypeError(f'this {type(model).__name__} was converted from a built model, so its constructor arguments '
                        f'are unknown: create it by name (dynvit.create_model) and load the weights, or save its '
                        f'state_dict with safetensors')
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    if not cfg.get('architecture'):
        raise ValueError(f'{type(model).__name__} was built directly, not by name: create it with '
                         f'dynvit.create_model(...) so the file can name its architecture')
    args = {**model.model_args, **model.sparsity_config(), 'num_classes': model.num_classes}
    pool_type = getattr(getattr(model, 'global_pool', None), 'pool_type', None)
    if pool_type is not None:  # a timm CNN's pooling module (reset_classifier may have changed it)
        args['global_pool'] = pool_type
    elif hasattr(model, 'global_pool') and hasattr(model, 'fc_norm'):  # reset_classifier may have changed the pooling
        args['global_pool'] = model.global_pool
        fc_norm = not isinstance(model.fc_norm, nn.Identity)
        if fc_norm != (model.global_pool in ('avg', 'avgmax', 'max')):  # not what timm derives from the pooling
            args['fc_norm'] = fc_norm
    meta = {
        'format': FORMAT,
        'architecture': cfg.get('architecture', ''),
        'model_args': _to_json(args, 'model argument'),
        'pretrained_cfg': _to_json(_data_cfg(model, cfg), 'pretrained_cfg entry'),
        'extra': _to_json(extra or {}, 'extra metadata'),
    }
    if getattr(model, 'untrained_sparse', None):  # its tensors alone would count as trained when loaded
        meta[UNTRAINED_KEY] = model.untrained_sparse
    if is_quantized(model):
        raise ValueError('INT8 models are not saved: save the float model and quantize after loading '
                         '(dynvit.compress.quantize_int8)')
    if masked_layers(model):
        raise ValueError('the model carries pruning masks (dynvit.compress); save it with '
                         'dynvit.save_pruned, which makes them permanent in the file')
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file_atomic(tensors, path, meta)


def save_pruned(model: nn.Module, path: str, extra: Optional[Dict[str, Any]] = None,
                dtype: Optional[Union[str, torch.dtype]] = None) -> None:
    """``save_model`` for a model that may be pruned (``dynvit.compress``); ``load_model`` (or
    ``create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=path))``) rebuilds it.

    The per-block sizes (``compress.pruned_structure``, for the models structured pruning
    supports) go into the file's ``extra`` metadata under ``'pruned_structure'``: the model
    constructors build uniform blocks, so the stored ``model_args`` alone would rebuild the
    unpruned shapes. Pruning masks (magnitude or AutoPrune) are made permanent in the saved copy
    (``remove_masks`` on a copy; ``model`` keeps its masks).

    Args:
        model: A dynvit model created by name.
        path: Target ``.safetensors`` file.
        extra: More JSON-serialisable metadata.
        dtype: Storage precision ('fp32', 'fp16', 'bf16'; see ``save_model``).
    """
    target = model
    if masked_layers(model):
        detach_masked_weights(model)  # in case a layer ran outside a hooked forward: deepcopy needs leaves
        target = remove_masks(copy.deepcopy(model))
    meta = dict(extra or {})
    try:
        meta[STRUCTURE_KEY] = pruned_structure(target)
    except ValueError:  # a family structured pruning does not handle: its shapes are the constructor's
        pass
    meta['weight_sparsity'] = sparsity(target).overall
    save_model(target, path, extra=meta, dtype=dtype)


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path`` to write; renamed over ``path`` when the block ends
    normally, removed otherwise: a crash or an interruption leaves the previous file (or none),
    never a partial one. The file gets the usual permissions (not mkstemp's private ones)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + '.', suffix='.tmp')
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # after writing: safetensors writes its files private (0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_file_atomic(tensors: Dict[str, torch.Tensor], path: str, metadata: Dict[str, str]) -> None:
    """``safetensors.torch.save_file`` through ``atomic_write``."""
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def read_state_dict(path: str, use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """Reads the tensors of a checkpoint file, refusing anything else with a clear error.

    safetensors files are read as they are; other files with ``torch.load(weights_only=True)``
    (no pickled code runs), unwrapping ``{'state_dict_ema' | 'model_ema' | 'state_dict' | 'model': ...}``
    the way timm does (``use_ema=False``: the EMA copies last), and dropping DDP/compile key prefixes.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    try:
        if path.endswith('.safetensors'):
            obj = load_file(path)
        else:
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # any parse failure means the file is not a readable checkpoint
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ''
        reason = f'{type(e).__name__}: {detail}' if detail else type(e).__name__
        raise ValueError(f'cannot read checkpoint {path}: {reason}') from None
    if isinstance(obj, dict):
        keys = ('state_dict_ema', 'model_ema', 'state_dict', 'model')
        for key in keys if use_ema else keys[2:] + keys[:2]:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f'{path} does not hold a state dict (parameter name -> tensor), got {type(obj).__name__}')
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f'{path} does not hold a state dict: {len(bad)} entries are not tensors ({", ".join(bad[:5])})')
    return clean_state_dict(obj)


def load_checkpoint(model: nn.Module, path: str) -> nn.Module:
    """Loads weights from ``path`` into ``model`` through its family's ``checkpoint_filter_fn``.

    Accepts what ``read_state_dict`` accepts; a dense timm ViT checkpoint fills a dynvit ViT's
    backbone. Mismatching keys raise a ValueError.
    """
    state_dict = read_state_dict(path)
    filter_fn = getattr(sys.modules[type(model).__module__], 'checkpoint_filter_fn', None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    state_dict = adapt_input_channels(state_dict, model)
    check_state_dict(state_dict, model, what=str(path))
    model.load_state_dict(state_dict)
    return mark_untrained(model, read_dynvit_metadata(path))


def mark_untrained(model: nn.Module, meta: Optional[Dict[str, Any]]) -> nn.Module:
    """``model``, loaded from a dynvit file (``meta``, its metadata; None for other files), marked
    as having untrained sparse modules when the file says so (it was saved before they were
    trained; the checkpoint filter, which sees only tensors, counts them as trained)."""
    why = (meta or {}).get(UNTRAINED_KEY)
    if why and hasattr(model, 'untrained_sparse'):
        model.untrained_sparse = why
    return model


def _data_cfg(model: nn.Module, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The pretrained-cfg entries that describe these weights, with the model's actual classes and input size."""
    out = {k: cfg[k] for k in _CFG_KEYS if cfg.get(k) is not None}
    out['num_classes'] = model.num_classes
    out['input_size'] = list(model_input_size(model))
    return out


def _to_json(value: Dict[str, Any], what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        bad = [k for k, v in value.items() if not _jsonable(v)]
        raise TypeError(f'cannot store {what}(s) {bad} as metadata: not JSON-serialisable') from None


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False

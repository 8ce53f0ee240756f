"""Training checkpoints: model weights, optimizer, scheduler, progress and random states in one
safetensors file, written atomically (a temporary file renamed over the old one)."""
import json
import random
from typing import Any, Dict, Tuple

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open

from ..hub.files import read_state_dict, save_file_atomic

__all__ = ['save_training_state', 'load_training_state']

FORMAT = 'dynvit-train-state'


def _flatten_optimizer(state_dict: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    tensors, plain = {}, {}
    for idx, param_state in state_dict['state'].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f'optimizer.{idx}.{name}'] = value.detach().contiguous().cpu()
            else:
                plain.setdefault(str(idx), {})[name] = value
    return tensors, {'param_groups': state_dict['param_groups'], 'plain_state': plain}


def _unflatten_optimizer(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split('.', 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, plain in meta['plain_state'].items():
        state.setdefault(int(idx), {}).update(plain)
    return {'state': state, 'param_groups': meta['param_groups']}


def save_training_state(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                        progress: Dict[str, Any]) -> None:
    """Writes everything a run needs to continue exactly where it is.

    Args:
        path: Target ``.safetensors`` file.
        model: The model (unwrapped from DDP).
        optimizer, scheduler: Their state dicts are stored.
        progress: JSON-serialisable progress (epoch, step, best metric, config, ...).
    """
    tensors = {f'model.{k}': v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    tensors['rng.torch'] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f'rng.cuda.{i}'] = s
    np_state = np.random.get_state()
    meta = {
        'format': FORMAT,
        'progress': json.dumps(progress),
        'optimizer': json.dumps(optim_meta),
        'scheduler': json.dumps(scheduler.state_dict()),
        'rng_python': json.dumps(random.getstate(), default=list),
        'rng_numpy': json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]]),
    }
    save_file_atomic(tensors, path, meta)


def _metadata(path: str) -> Dict[str, str]:
    with safe_open(str(path), framework='pt') as f:
        meta = f.metadata() or {}
    if meta.get('format') != FORMAT:
        raise ValueError(f'{path} is not a dynvit training checkpoint')
    return meta


def read_training_progress(path: str) -> Dict[str, Any]:
    """The progress dict ``save_training_state`` recorded (epoch, step, config, ...), without
    loading the tensors."""
    return json.loads(_metadata(path)['progress'])


def load_training_state(path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any) -> Dict[str, Any]:
    """Restores model, optimizer, scheduler and random states from ``save_training_state``;
    returns the progress dict."""
    meta = _metadata(path)
    tensors = read_state_dict(path)
    prefix = 'model.'
    model_sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(model_sd, strict=False)
    if missing or unexpected:
        raise ValueError(f'{path} was written for another model: {len(missing)} missing keys '
                         f'({", ".join(missing[:4])}), {len(unexpected)} unexpected ({", ".join(unexpected[:4])})')
    optimizer.load_state_dict(_unflatten_optimizer(
        {k: v for k, v in tensors.items() if k.startswith('optimizer.')}, json.loads(meta['optimizer'])))
    scheduler.load_state_dict(json.loads(meta['scheduler']))
    torch.set_rng_state(tensors['rng.torch'])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith('rng.cuda.'))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py = json.loads(meta['rng_python'])
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = json.loads(meta['rng_numpy'])
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))
    return json.loads(meta['progress'])

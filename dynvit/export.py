"""Deployment: ONNX export of a dynvit model (and loading the file into ONNX Runtime), and
``torch.compile`` of its inference path.

The exported graph is the model's fixed-shape inference path: a fixed number of tokens or
channels per image (top-k gathered tokens, each image's kept channels gathered into a grouped
convolution). Besides the logits it outputs what the aux reports per image (MACs, kept units
per stage, which units were kept), so ``dynvit predict FILE.onnx`` shows the same as on the
PyTorch model. The file's metadata carries the architecture, the model and sparsity
arguments and the data config. Not exportable: settings with data-dependent shapes (a threshold
mode where each image keeps another number of tokens, a batch's union of channels); ``to_onnx``
refuses them with the reason the model gives (``static_graph_problem``).
"""
import contextlib
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .hub.files import _data_cfg, atomic_write
from .families import spec_of
from .models import DynamicModel
from .models import model_input_size

__all__ = ['CompiledModel', 'OnnxModel', 'compile_model', 'load_onnx', 'to_onnx']

METADATA_KEY = 'dynvit'
OUTPUTS = ('logits', 'macs', 'kept', 'kept_masks')


class _ExportedForward(nn.Module):
    """The model's eval forward with its per-image report as tensors:
    ``logits [B, K]``, ``macs [B]`` int64, ``kept [B, S]`` int64 and ``kept_masks [B, sum(kept_of)]`` bool."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        logits, aux = self.model(x, return_aux=True)
        return logits, aux.macs, aux.kept, torch.cat(aux.kept_masks, dim=1)


def _check_static(model: nn.Module, what: str) -> None:
    if not isinstance(model, DynamicModel):
        raise TypeError(f'{type(model).__name__} is not a dynvit model; use torch.compile / torch.onnx.export directly')
    problem = model.static_graph_problem()
    if problem:
        raise ValueError(f'cannot {what} {type(model).__name__} as configured: {problem}')


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's optimiser logs every initializer it leaves alone; keep its warnings only."""
    loggers = [logging.getLogger(n) for n in ('onnx_ir', 'onnxscript', 'torch.onnx')]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _metadata(model: nn.Module, batch_size: Optional[int], input_size: Tuple[int, int, int],
              aux: Any) -> Dict[str, str]:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    info = dict(
        format='dynvit-onnx',
        architecture=cfg.get('architecture', ''),
        family=model.family,
        model_args=model.model_args,
        sparsity=model.sparsity_config(),
        sparsity_knob=model.sparsity_knob,
        kept_unit=model.kept_unit,
        pretrained_cfg=_data_cfg(model, cfg),
        input_size=list(input_size),
        batch_size=batch_size,
        outputs=list(OUTPUTS),
        kept_of=list(aux.kept_of),
        dense_macs=int(aux.dense_macs),
        grid=list(aux.grid) if aux.grid is not None else None,
    )
    return {METADATA_KEY: json.dumps(info, sort_keys=True, default=list)}


def to_onnx(model: nn.Module, path: str, batch_size: int = 1, dynamic_batch: bool = False,
            opset: Optional[int] = None) -> str:
    """Exports ``model`` (in eval mode, as configured) to an ONNX file, atomically.

    Args:
        model: A dynvit model created by name (its sparsity is fixed in the graph).
        path: The ``.onnx`` file to write.
        batch_size: The batch size of the graph (the example input's, when ``dynamic_batch``).
        dynamic_batch: A symbolic batch dimension instead of a fixed one.
        opset: ONNX opset (default: the exporter's).

    Returns:
        ``path``.
    """
    import onnx

    _check_static(model, 'export')
    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, got {batch_size}')
    if dynamic_batch and model.onnx_batch_fixed:
        raise ValueError(f'{model.family} models export with a fixed batch size ({model.onnx_batch_fixed}); '
                         f'give --batch-size instead of --dynamic-batch')
    model = model.eval()
    c, h, w = model_input_size(model)
    x = torch.zeros(max(batch_size, 2) if dynamic_batch else batch_size, c, h, w)
    with torch.no_grad():
        _, aux = model(x[:1], return_aux=True)
    kwargs: Dict[str, Any] = dict(dynamo=True, input_names=['images'], output_names=list(OUTPUTS),
                                  external_data=False, verbose=False)
    if dynamic_batch:
        kwargs['dynamic_shapes'] = ({0: torch.export.Dim('batch')},)
    if opset is not None:
        kwargs['opset_version'] = opset
    with _quiet_exporter():
        program = torch.onnx.export(_ExportedForward(model).eval(), (x,), **kwargs)
    proto = program.model_proto
    for key, value in _metadata(model, None if dynamic_batch else batch_size, (c, h, w), aux).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        onnx.save(proto, tmp)
    return path


class OnnxAux:
    """The per-image report of an ONNX Runtime pass, with the fields of ``DynamicAux`` that
    predictions and reports read (the file holds no merged groups or fused patches)."""

    token_groups = None
    fused_masks = None

    def __init__(self, macs: torch.Tensor, kept: torch.Tensor, masks: torch.Tensor, info: Dict[str, Any]) -> None:
        self.macs, self.executed_macs, self.kept = macs, macs, kept
        self.dense_macs = int(info['dense_macs'])
        self.kept_of: List[int] = list(info['kept_of'])
        self.grid = tuple(info['grid']) if info['grid'] else None
        self.kept_masks = list(masks.split(self.kept_of, dim=1))

    @property
    def kept_total(self) -> int:
        return self.kept_of[0] if self.grid is not None else sum(self.kept_of)


class OnnxModel(nn.Module):
    """An exported dynvit model run by ONNX Runtime, callable like the PyTorch model
    (``model(x)`` logits, ``model(x, return_aux=True)`` with the per-image report).

    Attributes:
        pretrained_cfg: The data config the file carries (input size, mean, std, class names).
        info: Everything the file's metadata says (architecture, sparsity, ...).
    """

    def __init__(self, path: str, threads: int = 0) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
        except Exception as e:  # ORT raises its own exception types for unreadable files
            raise ValueError(f'{path} is not a readable ONNX file: {str(e).splitlines()[0]}') from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(f'{path} was not exported by dynvit (no dynvit metadata); export it with `dynvit export`')
        self.info = json.loads(meta[METADATA_KEY])
        self.pretrained_cfg = dict(self.info['pretrained_cfg'], architecture=self.info['architecture'])
        self.num_classes = int(self.pretrained_cfg['num_classes'])
        self.family, self.kept_unit = self.info['family'], self.info['kept_unit']
        spec = spec_of(self.family)  # how its pictures and reports show what it kept
        self.picture, self.kept_patch, self.not_kept = spec.picture, spec.kept_patch, spec.not_kept
        self.sparsity_knob = self.info['sparsity_knob']
        self.path = str(path)

    def sparsity_config(self) -> Dict[str, Any]:
        return dict(self.info['sparsity'])

    def _run(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [torch.from_numpy(a) for a in self.session.run(None, {'images': x.detach().cpu().float().numpy()})]

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """Logits ``[B, K]`` (and the ``OnnxAux``). A graph exported for a fixed batch size runs
        other batches in chunks of it, the last one padded."""
        batch = self.info.get('batch_size')
        if batch is None or x.shape[0] == batch:
            outs = self._run(x)
        else:
            chunks = []
            for part in x.split(batch):
                pad = batch - part.shape[0]
                padded = torch.cat([part, part.new_zeros(pad, *part.shape[1:])]) if pad else part
                chunks.append([o[:part.shape[0]] for o in self._run(padded)])
            outs = [torch.cat(parts) for parts in zip(*chunks)]
        logits, macs, kept, masks = outs
        return (logits, OnnxAux(macs, kept, masks, self.info)) if return_aux else logits


def load_onnx(path: str, threads: int = 0) -> OnnxModel:
    """An ``.onnx`` file written by ``to_onnx``, in ONNX Runtime (CPU)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'ONNX file not found: {path}')
    return OnnxModel(path, threads)


class CompiledModel(nn.Module):
    """A dynvit model with its forward compiled by ``torch.compile`` (``compile_model``); the
    model's attributes (``pretrained_cfg``, ``sparsity_config()``, ...) read through.

    Attributes:
        model: The eager model (its parameters are the compiled graph's).
    """

    def __init__(self, model: nn.Module, dynamic_batch: bool, **kwargs: Any) -> None:
        super().__init__()
        self.model = model
        self.dynamic_batch = dynamic_batch
        self.__dict__['_compiled'] = torch.compile(model, fullgraph=True, **kwargs)  # not a second submodule

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        if self.dynamic_batch and x.shape[0] > 1:
            torch._dynamo.maybe_mark_dynamic(x, 0)  # the batch only: the token and channel counts stay static
        return self._compiled(x, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def compile_model(model: nn.Module, dynamic_batch: bool = True, **kwargs: Any) -> CompiledModel:
    """``torch.compile`` of the model's inference path, whole-graph (``fullgraph=True``: no graph
    breaks, so no host syncs) at settings with static shapes.

    ``dynamic_batch`` marks the batch dimension of every input dynamic, so a new batch size does
    not recompile (batch 1 gets its own graph: torch specialises sizes 0 and 1); token and
    channel counts stay static. Settings with data-dependent shapes are refused with the reason
    the model gives (``static_graph_problem``).

    Args:
        model: A dynvit model in eval mode.
        dynamic_batch: A symbolic batch size.
        **kwargs: More ``torch.compile`` arguments (``mode``, ``backend``, ...).
    """
    _check_static(model, 'compile')
    return CompiledModel(model, dynamic_batch, **kwargs)

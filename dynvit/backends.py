"""How a model runs on its device: eager, replayed as a CUDA graph, or compiled; and which wins.

A sparse model saves MACs but adds small kernels (keep predictors, top-k, gathers, merges,
weight gathers). Where the device is fast and the batch small, the launches, not the MACs, set
the time, so the backend decides whether the saving shows (``docs/deployment.md``):

* ``eager``: every op launched from Python. Any setting, no start-up cost; on a GPU the launch
  overhead of each extra kernel is paid at every call.
* ``cuda_graph``: the forward captured once per input shape (``CudaGraphModel``) and replayed
  with one launch: no Python, no per-kernel launch cost. Needs a fixed setting whose shapes do not
  depend on the data and no host synchronisation (every dynvit inference path at a fixed setting:
  top-k, merging, grouped channel gating). CUDA only.
* ``compiled``: ``torch.compile`` (inductor, ``export.compile_model``): elementwise work fused
  into fewer, larger kernels; compiling takes a while (seconds to a minute per model and dtype).
* ``compiled_cuda_graph``: the compiled graph replayed as a CUDA graph, both gains together.

``choose_backend`` times the model and its dense twin on each backend, interleaved in one run,
and returns the fastest with the numbers, the MACs each image really executed and a warning
when the sparse model is slower than its dense twin on the twin's best backend: it is never
slower by surprise.
"""
import dataclasses
import traceback
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .export import compile_model
from .models import DynamicModel, model_input_size
from .runtime import median_latencies, smooth_images

__all__ = ['BACKENDS', 'BackendChoice', 'CudaGraphModel', 'choose_backend', 'error_line', 'on_backend']

BACKENDS = ('eager', 'cuda_graph', 'compiled', 'compiled_cuda_graph')


class CudaGraphModel(nn.Module):
    """A model's plain forward captured as a CUDA graph per input shape and dtype, and replayed.

    The first call with a new shape warms the model up on a side stream (its caches fill there),
    captures one forward into a graph and keeps the graph with its input and output buffers; every
    call copies the input in, replays the graph (one launch) and returns a copy of the output.
    Graphs of all shapes share one memory pool. ``return_aux`` and other arguments run the wrapped
    model eagerly. The model's attributes (``pretrained_cfg``, ``sparsity_config()``, ...) read
    through. A setting whose shapes depend on the data, or an op that waits for the host, fails to
    capture with torch's error.

    Args:
        model: A model in eval mode on a CUDA device (eager or compiled).
        warmup: Forwards before capturing (compiling, cuDNN's choice of algorithm, caches).
    """

    def __init__(self, model: nn.Module, warmup: int = 3) -> None:
        super().__init__()
        self.model = model
        self.warmup = warmup
        self.__dict__['_graphs'] = {}  # (shape, dtype, device) -> (input, graph, output)
        self.__dict__['_pool'] = None

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        if kwargs:
            return self.model(x, **kwargs)
        key = (tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(x)
        static_in, graph, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    @torch.no_grad()
    def _capture(self, x: torch.Tensor) -> Tuple[torch.Tensor, 'torch.cuda.CUDAGraph', torch.Tensor]:
        if x.device.type != 'cuda':
            raise ValueError(f'a CUDA graph runs on a CUDA device; the input is on {x.device}')
        static_in = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.model(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self.model(static_in)
        self.__dict__['_pool'] = graph.pool()
        return static_in, graph, static_out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def on_backend(model: nn.Module, runtime: str, **compile_kwargs: Any) -> nn.Module:
    """``model`` (eval, on its device) to run on ``runtime`` (one of ``BACKENDS``); compiling and
    capturing happen at the first call of each shape. ``compile_kwargs`` go to ``torch.compile``
    (its own ``backend``, ``mode``, ...).

    Raises:
        ValueError: An unknown backend, or a CUDA graph for a model not on a CUDA device.
    """
    if runtime not in BACKENDS:
        raise ValueError(f'unknown backend {runtime!r}; choose from {", ".join(BACKENDS)}')
    device = next(iter(model.parameters())).device
    if 'cuda_graph' in runtime and device.type != 'cuda':
        raise ValueError(f'the {runtime} backend replays CUDA graphs; the model is on {device}')
    if runtime == 'eager':
        return model
    if runtime == 'cuda_graph':
        return CudaGraphModel(model)
    compiled = compile_model(model, **compile_kwargs)
    return CudaGraphModel(compiled) if runtime == 'compiled_cuda_graph' else compiled


@dataclasses.dataclass
class BackendChoice:
    """What ``choose_backend`` measured and chose.

    Attributes:
        backend: The fastest backend for the sparse model.
        model: The sparse model on that backend (call it with batches of ``batch_size``).
        batch_size: The batch size timed.
        ms: Median milliseconds per batch of the sparse model, per backend that ran.
        dense_ms: The same for its dense twin.
        failed: ``{backend: reason}`` for the backends that did not run (sparse or dense).
        macs: Mean MACs per image the sparse model executed (what ran, e.g. a batch's union of
            channels), on the timed batch.
        dense_macs: MACs per image of the dense twin.
    """
    backend: str
    model: nn.Module
    batch_size: int
    ms: Dict[str, float]
    dense_ms: Dict[str, float]
    failed: Dict[str, str]
    macs: float
    dense_macs: float

    @property
    def dense_backend(self) -> str:
        """The dense twin's fastest backend."""
        return min(self.dense_ms, key=self.dense_ms.get)

    @property
    def speedup(self) -> float:
        """The dense twin's best time over the sparse model's best time (> 1: faster)."""
        return self.dense_ms[self.dense_backend] / self.ms[self.backend]

    def __str__(self) -> str:
        rows = [f'batch {self.batch_size}: {self.macs / 1e9:.3f} GMACs/image executed of {self.dense_macs / 1e9:.3f} '
                f'dense; {self.backend} {self.ms[self.backend]:.3f} ms vs dense {self.dense_backend} '
                f'{self.dense_ms[self.dense_backend]:.3f} ms: {self.speedup:.2f}x']
        for b in BACKENDS:
            if b in self.ms or b in self.dense_ms:
                sparse, dense = self.ms.get(b), self.dense_ms.get(b)
                rows.append(f'  {b:<20} sparse {"-" if sparse is None else f"{sparse:.3f} ms":>12}   dense '
                            f'{"-" if dense is None else f"{dense:.3f} ms":>12}')
        rows += [f'  {b:<20} failed: {why}' for b, why in self.failed.items()]
        return '\n'.join(rows)


def error_line(error: BaseException) -> str:
    """``'Type: first line of its message'``: an error in one line (compiler errors run to pages)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f'{type(error).__name__}: {lines[0] if lines else ""}'


def choose_backend(
        model: DynamicModel,
        batch_size: int,
        backends: Optional[Sequence[str]] = None,
        rounds: int = 5,
        runs: int = 10,
        images: Optional[torch.Tensor] = None,
        **compile_kwargs: Any,
) -> BackendChoice:
    """Times ``model`` and its dense twin (``dense_copy``) on each backend, in turns, at one batch
    size, and returns the fastest backend for the model.

    The model keeps its device and dtype (move it first: ``model.to('cuda', torch.bfloat16)``).
    A backend that fails (e.g. compiling) is left out with its reason in ``failed``. A
    ``UserWarning`` says so when the sparse model on its best backend is slower than the dense
    twin on the twin's best backend, with both times: serve the dense twin, or a larger batch.

    Args:
        model: A dynvit model in eval mode at a setting with static shapes.
        batch_size: The batch size it will serve.
        backends: Which to try (default: every one the device runs: ``eager`` and ``compiled``,
            and on CUDA ``cuda_graph`` and ``compiled_cuda_graph``).
        rounds, runs: Rounds the candidates take turns in, timed calls per candidate per round.
        images: A batch to time on (default: smooth random images of the model's input size).
        **compile_kwargs: For ``torch.compile`` (``mode``, ``backend``, ...).

    Returns:
        The ``BackendChoice``.

    Raises:
        RuntimeError: No backend ran the sparse model (with each one's reason).
    """
    param = next(iter(model.parameters()))
    device, dtype = param.device, param.dtype
    if backends is None:
        backends = [b for b in BACKENDS if device.type == 'cuda' or 'cuda_graph' not in b]
    if images is None:
        images = smooth_images(batch_size, model_input_size(model), torch.Generator().manual_seed(0))
    x = images.to(device, dtype)
    model = model.eval()
    dense = model.dense_copy().eval()
    candidates: Dict[Tuple[str, str], nn.Module] = {}
    failed: Dict[str, str] = {}
    for backend in backends:
        for which, m in (('sparse', model), ('dense', dense)):
            try:
                runner = on_backend(m, backend, **compile_kwargs)
                with torch.inference_mode():
                    runner(x)  # compile / capture now: a failure is the backend's, not the timing's
                candidates[(which, backend)] = runner
            except Exception as e:  # recorded: another backend may run
                failed[backend if which == 'sparse' else f'{backend} (dense)'] = error_line(e)
                warnings.warn(f'{backend} ({which}): {error_line(e)}\n{traceback.format_exc(limit=-3)}',
                              RuntimeWarning, stacklevel=2)
    if not any(which == 'sparse' for which, _ in candidates):
        raise RuntimeError('no backend ran the model: ' + '; '.join(f'{b}: {w}' for b, w in failed.items()))
    times = median_latencies({f'{w}/{b}': m for (w, b), m in candidates.items()}, x, rounds, runs)
    ms = {b: times[f'sparse/{b}'] * 1e3 for w, b in candidates if w == 'sparse'}
    dense_ms = {b: times[f'dense/{b}'] * 1e3 for w, b in candidates if w == 'dense'}
    best = min(ms, key=ms.get)
    with torch.inference_mode():
        _, aux = model(x, return_aux=True)
    choice = BackendChoice(best, candidates[('sparse', best)], batch_size, ms, dense_ms, failed,
                           aux.executed_macs.double().mean().item(), float(aux.dense_macs))
    if dense_ms and choice.speedup < 1:
        warnings.warn(f'{type(model).__name__} at batch {batch_size} on {device} ({dtype}): {ms[best]:.3f} ms on '
                      f'{best}, slower than its dense twin ({dense_ms[choice.dense_backend]:.3f} ms on '
                      f'{choice.dense_backend}, {choice.speedup:.2f}x): serve the dense twin, or a larger batch',
                      UserWarning, stacklevel=2)
    return choice

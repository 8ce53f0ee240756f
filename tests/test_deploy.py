"""Deployment: torch.compile of the fixed-shape inference paths as whole graphs (no graph breaks,
no recompiles), and ONNX export run by ONNX Runtime with the PyTorch outputs."""
import json
import os
from pathlib import Path

import pytest
import torch
import torch._dynamo as dynamo
from PIL import Image

import dynvit
from dynvit.export import compile_model, load_onnx, to_onnx
from helpers import randomize_batch_norms, run_cli
from numerics import assert_matches, assert_rounding_close, rounding_tolerance

FAMILIES = ['test_dynamicvit', 'test_evovit2', 'test_tome2', 'test_evit', 'test_fbs_resnet']  # one test model per family (compiling takes time)


def _model(name, **kwargs):
    """A test model whose choices are clear-cut (no near-ties for float rounding to flip)."""
    torch.manual_seed(0)
    model = dynvit.create_model(name, **kwargs).eval()
    if 'threshold' in model.sparsity_settings():  # spread the keep scores of the fresh predictors
        with torch.no_grad():
            for p in model.score_predictor.parameters():
                if p.ndim == 2:
                    p.mul_(8.0)
    if 'execution' in model.sparsity_settings():
        randomize_batch_norms(model)
    return model


def _images(model, batch):
    return torch.randn(batch, *model.pretrained_cfg['input_size'])


@pytest.mark.lowest_torch
@pytest.mark.parametrize('name', FAMILIES)
def test_compiles_as_one_graph_without_recompiling(name):
    model = _model(name)
    dynamo.reset()
    dynamo.utils.counters.clear()
    compiled = compile_model(model, backend='eager')  # graph capture; inductor runs in benchmarks/bench_deploy.py
    with torch.no_grad():
        for batch in (2, 3, 5, 3):
            x = _images(model, batch)
            assert_rounding_close(model, compiled(x), model(x))  # the graph may fuse or reorder
        logits, aux = compiled(x, return_aux=True)
        _, eager_aux = model(x, return_aux=True)
    assert torch.equal(aux.macs, eager_aux.macs) and torch.equal(aux.kept, eager_aux.kept)
    graphs = dynamo.utils.counters['stats']['unique_graphs']
    assert graphs == 2, f'{graphs} graphs for two call signatures over batches 2, 3, 5'  # logits, and with the aux


def test_data_dependent_settings_are_refused_with_the_reason():
    model = _model('test_dynamicvit').set_sparsity(mode='threshold')
    with pytest.raises(ValueError, match='threshold mode keeps a different number of tokens per image'):
        compile_model(model)
    with pytest.raises(ValueError, match='threshold mode'):
        to_onnx(model, 'never.onnx')
    with pytest.raises(ValueError, match="execution 'union'"):
        compile_model(_model('test_fbs_resnet').set_sparsity(execution='union'))
    with pytest.raises(ValueError, match='fixed batch size'):
        to_onnx(_model('test_fbs_resnet'), 'never.onnx', dynamic_batch=True)


@pytest.mark.lowest_torch
@pytest.mark.parametrize('name, dynamic', [('test_dynamicvit', True), ('test_evovit2', False), ('test_tome2', False), ('test_evit', True),
                                           ('test_fbs_resnet', False)])
def test_onnx_runtime_reproduces_the_pytorch_outputs(name, dynamic, tmp_path):
    model = _model(name)
    path = to_onnx(model, str(tmp_path / 'm.onnx'), batch_size=3, dynamic_batch=dynamic)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, written atomically
    onnx_model = load_onnx(path)
    info = onnx_model.info
    assert info['architecture'] == name and info['sparsity'] == json.loads(json.dumps(model.sparsity_config()))
    assert info['batch_size'] == (None if dynamic else 3)
    assert onnx_model.pretrained_cfg['input_size'] == list(model.pretrained_cfg['input_size'])
    for batch in (1, 3, 4):  # a fixed-batch graph runs other batches in padded chunks
        x = _images(model, batch)
        logits, aux = onnx_model(x, return_aux=True)
        with torch.no_grad():
            ref, ref_aux = model(x, return_aux=True)
        # ONNX Runtime's kernels round differently: logits up to rounding, decisions exact unless one sat at a tie
        masks = [(a, b) for a, b in zip(aux.kept_masks, ref_aux.kept_masks)]
        assert_matches(model, x, logits, ref, f'{name} in ONNX Runtime', [(aux.macs, ref_aux.macs), (aux.kept, ref_aux.kept),
                                                                          *masks])
        assert aux.dense_macs == ref_aux.dense_macs and aux.kept_of == ref_aux.kept_of


def test_export_then_predict_and_bench_the_file(tmp_path):
    out = tmp_path / 'kr05.onnx'
    r = run_cli('export', 'dynamicvit_pico_patch4_28.fmnist_kr05', out, '--dynamic-batch')
    assert r.returncode == 0, r.stderr
    assert 'batch any' in r.stdout and '"keep_ratio": [0.5, 0.25, 0.125]' in r.stdout
    image = str(Path(dynvit.__file__).parent / 'samples' / 'fmnist_test0018_bag.png')

    def run(*args):
        r = run_cli(*args)
        return r.returncode, r.stdout, r.stderr

    results = []
    for model in (str(out), 'dynamicvit_pico_patch4_28.fmnist_kr05'):
        code, stdout, stderr = run('predict', model, image, '--json', '--topk', '2')
        assert code == 0, stderr
        results.append(json.loads(stdout)['predictions'][0])
    a, b = results
    assert a['topk'][0]['label'] == b['topk'][0]['label'] == 'Bag'
    # probabilities move by at most half of what rounding moves the logits
    model = dynvit.create_model('dynamicvit_pico_patch4_28.fmnist_kr05', pretrained=True).eval()
    with torch.no_grad():
        logits = model(dynvit.data.model_transform(model)(Image.open(image))[None])
    assert abs(a['topk'][0]['prob'] - b['topk'][0]['prob']) <= rounding_tolerance(model, logits) / 2
    assert (a['kept'], a['macs'], a['dense_macs']) == (b['kept'], b['macs'], b['dense_macs'])
    code, stdout, _ = run('bench', str(out), '--batch-size', '2', '--runs', '2', '--rounds', '1', '--json')
    assert code == 0 and json.loads(stdout)['backend'] == 'onnxruntime'
    code, _, stderr = run('predict', str(out), image, '--keep-ratio', '0.3')
    assert code == 1 and 'an ONNX file runs as it was exported; --keep-ratio does not apply' in stderr


@pytest.mark.lowest_torch
@pytest.mark.parametrize('name', ['test_dynamicvit', 'test_fbs_resnet'])  # one mechanism for every family
def test_settings_are_read_inside_a_whole_graph_and_a_change_recompiles(name):
    """The sparsity settings (``setting`` attributes over one dict) are read in the graph without a
    break, and changing one on the built model is seen by the compiled one (a guard, then a new graph)."""
    model = _model(name)
    compiled = torch.compile(model, backend='eager', fullgraph=True, dynamic=False)
    x = _images(model, 2)
    with torch.no_grad():
        assert_rounding_close(model, compiled(x), model(x))
        model.set_sparsity_level([0.9 * v for v in model.sparsity_level])
        assert_rounding_close(model, compiled(x), model(x))


# ATen ops whose result the host must read before going on: a GPU stalls on them and a CUDA graph
# cannot capture them (``.item()`` / ``int(t)`` / ``.tolist()`` are ``_local_scalar_dense``)
HOST_SYNCS = {'_local_scalar_dense', 'nonzero', '_unique2', 'unique_dim', 'unique_consecutive', 'masked_select',
              'repeat_interleave', 'bincount', 'equal', 'is_nonzero'}


@pytest.mark.lowest_torch
@pytest.mark.parametrize('name', FAMILIES + ['test_fbs_efficientnet'])
def test_the_inference_path_never_waits_for_the_host(name):
    """Capture safety, checked on the CPU op by op: at a fixed setting the forward (with and without
    the aux, batch 1 and 3) runs no op whose result the host must read. Channel gating runs as it does
    on a GPU: 'auto' there is 'grouped' (on the CPU small maps may take 'union', which reads the batch's
    union of channels)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Syncs(TorchDispatchMode):
        found = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in HOST_SYNCS:
                self.found.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    model = _model(name)
    if 'execution' in model.sparsity_settings():
        assert all(blk._auto(torch.empty(3, 1, 4, 4, device='meta')) == 'grouped' for blk in model.gated_blocks)
        model.set_sparsity(execution='grouped')
    for batch in (1, 3):
        x = _images(model, batch)
        with torch.no_grad(), Syncs() as mode:
            model(x)
            model(x, return_aux=True)
        assert not mode.found, (batch, mode.found)


def test_choose_backend_times_the_model_and_its_dense_twin_and_names_what_failed():
    """On the CPU: eager and compiled (graph capture only, to keep the test fast) against the dense
    twin in one interleaved run; a CUDA graph is refused with the reason; the chosen runner
    computes what the model computes; the MACs are what each image executed."""
    from dynvit.backends import choose_backend
    model = _model('test_dynamicvit')
    with pytest.warns(RuntimeWarning, match='replays CUDA graphs'):
        choice = choose_backend(model, 2, backends=('eager', 'compiled', 'cuda_graph'), rounds=1, runs=1,
                                backend='eager')
    assert set(choice.ms) == set(choice.dense_ms) == {'eager', 'compiled'}
    assert choice.backend in choice.ms and choice.dense_backend in choice.dense_ms
    assert choice.failed == {'cuda_graph': 'ValueError: the cuda_graph backend replays CUDA graphs; the model is '
                                           'on cpu', 'cuda_graph (dense)': 'ValueError: the cuda_graph backend '
                                           'replays CUDA graphs; the model is on cpu'}
    assert 0 < choice.macs < choice.dense_macs and 'batch 2:' in str(choice) and 'cuda_graph' in str(choice)
    x = _images(model, 2)
    with torch.no_grad():
        assert_rounding_close(model, choice.model(x), model(x))


def test_choose_backend_warns_when_the_sparse_model_is_slower(monkeypatch):
    import dynvit.backends as backends
    monkeypatch.setattr(backends, 'median_latencies',
                        lambda models, x, rounds, runs: {k: 2.0 if k.startswith('sparse') else 1.0 for k in models})
    with pytest.warns(UserWarning, match=r'slower than its dense twin \(1000.000 ms on eager, 0.50x\): serve the '
                                         r'dense twin, or a larger batch'):
        choice = backends.choose_backend(_model('test_fbs_resnet'), 1, backends=('eager',))
    assert choice.speedup == 0.5


def test_cuda_graphs_and_unknown_backends_are_one_line_errors():
    from dynvit.backends import CudaGraphModel, on_backend
    model = _model('test_evit')
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; choose from eager, cuda_graph, compiled"):
        on_backend(model, 'tensorrt')
    with pytest.raises(ValueError, match='a CUDA graph runs on a CUDA device; the input is on cpu'):
        CudaGraphModel(model)(_images(model, 1))


def test_gpu_benchmark_runs_its_cpu_path():
    """``benchmarks/bench_gpu.py --device cpu --quick``: every family, checks, profiles, the table.
    Eager only, to keep the test fast: compiling every family twice takes a minute on 2 cores
    (``on_backend``'s compiled path is tested by ``choose_backend``'s test)."""
    import subprocess
    import sys
    root = Path(__file__).parent.parent
    r = subprocess.run([sys.executable, str(root / 'benchmarks' / 'bench_gpu.py'), '--device', 'cpu', '--quick',
                        '--backends', 'eager'], capture_output=True, text=True, timeout=600, cwd=root,
                       env={**os.environ, 'PYTHONPATH': str(root)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'FAIL' not in r.stdout and 'failure' not in r.stdout, r.stdout
    for label in ('DynamicViT/0.7', 'Evo-ViT/0.5', 'EViT 0.7', 'ToMe r=13', 'FBS d=0.5'):
        assert f'{label} ' in r.stdout.split('DeiT-S bf16:')[-1] or f'{label}' in r.stdout.split('ResNet-18 bf16:')[-1]
    assert 'DeiT-S fp32:' in r.stdout and 'ResNet-18 bf16:' in r.stdout

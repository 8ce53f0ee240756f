"""Makes the ATS fixtures of ``tests/fixtures/official/`` by running the released ATS code.

Source: adaptivetokensampling/ATS @ 9271257 (``libs/models/transformers/vit.py`` class ``ViT``,
``ats_block.py`` ``ATSBlock`` / ``AdaptiveTokenSampler``), unmodified. It imports
``fvcore.common.registry`` (a stand-in with ``Registry`` is given here) and ``libs.models.build``
(only for its registry); the package ``__init__`` files that import the training stack are
skipped. The sampler is only observed (its own methods wrapped to record their inputs and
outputs), never changed.

    python tests/make_official_ats.py PATH/TO/ATS [--out tests/fixtures/official]

The released code only runs with ``NUM_TOKENS`` at least the tokens present (a smaller K fails in
a ``gather``), so every ATS block samples ``n_ref - 1`` points, ``n_ref`` being the tokens of the
image (class token included). Its batched path pads the images to the longest one and adds
``1e-6 / N`` to every attention weight of the padded positions, so a batch does not compute what
its images would alone (logits differ by up to ~1e-2 here); each image is therefore run alone,
as the per-image eval path, and the batched logits are stored apart (``output_batched``).
"""
import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

COMMIT = '92712578d3ba10e4a4e1e0f0b2ee3c8c38ad4e1e'

CONFIGS = {  # name -> (constructor arguments, ATS blocks, images, extra noise std on the qkv weights)
    # the released DeiT-S schedule (ATS in blocks 3..11) on a small 224-px model, patch 32: 49 patches
    'ats_tiny_a': (dict(img_size=224, patch_size=32, embed_dim=64, depth=12, num_heads=2, mlp_ratio=4.0,
                        qkv_bias=True, num_classes=10), [3, 4, 5, 6, 7, 8, 9, 10, 11], 6, 0.15),
    # another geometry: 96 px, patch 16 (36 patches), 3 heads, MLP ratio 2, no qkv bias, ATS in blocks 1, 3, 5
    'ats_tiny_b': (dict(img_size=96, patch_size=16, embed_dim=48, depth=6, num_heads=3, mlp_ratio=2.0,
                        qkv_bias=False, num_classes=7), [1, 3, 5], 6, 0.3),
}


def _load_official(root: Path):
    """The released ``ViT`` class, imported from ``root`` without the training stack."""
    fvcore = types.ModuleType('fvcore')
    fvcore.common = types.ModuleType('fvcore.common')
    registry = types.ModuleType('fvcore.common.registry')

    class Registry(dict):
        def __init__(self, name):
            super().__init__()

        def register(self):
            return lambda obj: self.setdefault(obj.__name__, obj)

    registry.Registry = Registry
    sys.modules.update({'fvcore': fvcore, 'fvcore.common': fvcore.common, 'fvcore.common.registry': registry})
    for name, path in (('libs', root / 'libs'), ('libs.models', root / 'libs' / 'models'),
                       ('libs.models.transformers', root / 'libs' / 'models' / 'transformers')):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    for name in ('libs.models.build', 'libs.models.transformers.vit'):
        spec = importlib.util.spec_from_file_location(name, root / (name.replace('.', '/') + '.py'))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules['libs.models.transformers.vit'].ViT, sys.modules['libs.models.transformers.ats_block']


def _cfg(kwargs, ats_blocks):
    n_tokens = (kwargs['img_size'] // kwargs['patch_size']) ** 2 + 1
    vit = SimpleNamespace(IMG_SIZE=kwargs['img_size'], PATCH_SIZE=kwargs['patch_size'], IN_CHANNELS=3,
                          NUM_CLASSES=kwargs['num_classes'], EMBED_DIM=kwargs['embed_dim'], DEPTH=kwargs['depth'],
                          NUM_HEADS=kwargs['num_heads'], MLP_RATIO=kwargs['mlp_ratio'], QKV_BIAS=kwargs['qkv_bias'],
                          QK_SCALE=None, REPRESENTATION_SIZE=None, DROP_RATE=0.0, ATTN_DROP_RATE=0.0,
                          DROP_PATH_RATE=0.0, HYBRID_BACKBONE=None, NORM_LAYER=None, ATS_BLOCKS=ats_blocks,
                          NUM_TOKENS=[n_tokens] * kwargs['depth'], DROP_TOKENS=True)
    return SimpleNamespace(VIT=vit)


class _Recorder:
    """Wraps the sampler's own steps of every ATS block to record, per call, the sorted order,
    the normalised cdf, the sample points and the unique picks."""

    def __init__(self, ats_module):
        self.calls = []
        sampler = ats_module.AdaptiveTokenSampler
        self.originals = (sampler.create_ys, sampler.get_unique_indices, sampler.score_assignment_step)
        create_ys, unique, score = self.originals
        recorder = self

        def create_ys_rec(normalized_cdf, n_tokens):
            ys = create_ys(normalized_cdf, n_tokens)
            recorder.calls[-1].update(ncdf=normalized_cdf.clone(), ys=ys.clone())
            return ys

        def unique_rec(indices, max_value):
            out = unique(indices, max_value)
            recorder.calls[-1].update(picks=indices.clone(), unique=out.clone(), max_value=max_value)
            return out

        def score_rec(attn, v):
            sorted_scores, sorted_indices = score(attn, v)
            recorder.calls.append(dict(sorted_scores=sorted_scores.clone(), sorted_indices=sorted_indices.clone()))
            return sorted_scores, sorted_indices

        sampler.create_ys = staticmethod(create_ys_rec)
        sampler.get_unique_indices = staticmethod(unique_rec)
        sampler.score_assignment_step = staticmethod(score_rec)
        self.sampler = sampler

    def close(self):
        for name, fn in zip(('create_ys', 'get_unique_indices', 'score_assignment_step'), self.originals):
            setattr(self.sampler, name, staticmethod(fn))


def _stage_record(call, original):
    """Kept patches of one ATS block for one image (B = 1): ``original`` maps the block's input
    tokens (class token excluded) to patches; returns the kept patches in the released order (least
    significant first), the new map, and the smallest nearest-cdf margin."""
    n = call['max_value']  # tokens without the class token
    unique = call['unique'][0, :n]
    local = call['sorted_indices'][0][unique[unique < n]]  # kept tokens (least significant first)
    dist = (call['ys'][0][:, None] - call['ncdf'][0][None, :]).abs()  # [points, n]
    two = dist.topk(2, dim=1, largest=False).values
    margin = float((two[:, 1] - two[:, 0]).min())
    return original[local], original[local], margin


def make(root: Path, out: Path) -> None:
    ViT, ats_module = _load_official(root)
    out.mkdir(parents=True, exist_ok=True)
    for name, (kwargs, ats_blocks, num_images, sharpen) in CONFIGS.items():
        torch.manual_seed(0)
        model = ViT(_cfg(kwargs, ats_blocks))
        with torch.no_grad():
            for key, p in model.named_parameters():
                if not key.endswith('out_zero_mask'):  # a constant (zeros) the released code keeps as a parameter
                    p.add_(0.02 * torch.randn_like(p))
            for key, p in model.named_parameters():  # peaked attention: scores far apart, counts that differ
                if key.endswith('attn.qkv.weight'):
                    p.add_(sharpen * torch.randn_like(p))
        model.eval()
        torch.manual_seed(1)
        x = torch.randn(num_images, 3, kwargs['img_size'], kwargs['img_size'])
        recorder = _Recorder(ats_module)
        outputs, tensors, stages = [], {}, []
        try:
            with torch.no_grad():
                for b in range(num_images):
                    recorder.calls.clear()
                    logits, _ = model(x[b:b + 1])
                    outputs.append(logits)
                    num_patches = (kwargs['img_size'] // kwargs['patch_size']) ** 2
                    original = torch.arange(num_patches)
                    per_image = []
                    for s, call in enumerate(recorder.calls):
                        kept, original, margin = _stage_record(call, original)
                        tensors[f'aux.image{b}.stage{s}.kept_patches'] = kept.contiguous()
                        per_image.append(dict(tokens_in=int(call['max_value']) + 1, kept_patches=len(kept),
                                              smallest_margin=margin))
                    stages.append(per_image)
                batched, _ = model(x)
        finally:
            recorder.close()
        state = {f'state_dict.{k}': v.contiguous() for k, v in model.state_dict().items()}
        save_file({**state, 'input': x, 'output': torch.cat(outputs), 'output_batched': batched, **tensors},
                  str(out / f'{name}.safetensors'))
        meta = dict(
            repo='adaptivetokensampling/ATS', commit=COMMIT,
            file='libs/models/transformers/vit.py (class ViT), ats_block.py (ATSBlock, AdaptiveTokenSampler)',
            constructor_kwargs=kwargs, ats_blocks=ats_blocks, num_tokens=_cfg(kwargs, ats_blocks).VIT.NUM_TOKENS,
            drop_tokens=True,
            init='torch.manual_seed(0); model=ViT(cfg) (its own init); then for each p in named_parameters() order: '
                 'p += 0.02*randn_like(p) (same RNG stream), except the constant zeros `*.attn.out_zero_mask`; then for each *attn.qkv.weight in the same order: '
                 f'p += {sharpen}*randn_like(p) (peaked attention); model.eval()',
            input=f'torch.manual_seed(1); x = torch.randn({num_images}, 3, H, W)',
            forward_path='model.eval(); with torch.no_grad(): each image alone, logits, _ = model(x[b:b+1]); '
                         '`output` stacks them. `output_batched` is model(x) on the whole batch (padded, see the '
                         'script docstring).',
            stages_per_image=stages,
            aux='aux.image{b}.stage{s}.kept_patches: the patches (row-major index, class token excluded) kept by '
                'ATS block s, in the released order (least significant first)',
            smallest_margin_overall=min(st['smallest_margin'] for image in stages for st in image),
            batched_vs_single_max_abs_diff=float((batched - torch.cat(outputs)).abs().max()),
        )
        (out / f'{name}.json').write_text(json.dumps(meta, indent=1) + '\n')
        print(name, 'kept per stage:', [[st['kept_patches'] for st in image] for image in stages],
              'smallest margin', meta['smallest_margin_overall'], 'batched-single', meta['batched_vs_single_max_abs_diff'])


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('root', type=Path, help='a checkout of adaptivetokensampling/ATS')
    parser.add_argument('--out', type=Path, default=Path(__file__).parent / 'fixtures' / 'official')
    args = parser.parse_args()
    make(args.root, args.out)

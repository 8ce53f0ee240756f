"""``dynvit compress``: one-shot structured / magnitude pruning and reduced-precision storage of a model file."""
import argparse
import json
import os
from pathlib import Path

from ._common import EXIT_OK, check_output, example_family, load_model_arg

_TOKENS, _CHANNELS = example_family('patches'), example_family('channels')
EXAMPLES = (
    'examples:\n'
    f'  dynvit compress {_TOKENS.example} --heads 0.34 --mlp 0.5 --out small.safetensors\n'
    '  dynvit finetune small.safetensors --data fashion-mnist --epochs 2 --out runs/small   # recover accuracy\n'
    f'  dynvit compress {_CHANNELS.example} --channels 0.25 --dtype fp16 --out cnn.safetensors\n'
    '  dynvit eval small.safetensors --data fashion-mnist --split test --int8'
)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f'a fraction in [0, 1) is needed, got {text}')
    return value


def _summary(model) -> dict:
    import torch
    from ..compress import sparsity
    from ..models import model_input_size
    from ..runtime import profile
    x = torch.zeros(1, *model_input_size(model))
    _, report = profile(model, x)
    return dict(parameters=sum(p.numel() for p in model.parameters()), mean_macs=report.mean_macs,
                dense_macs=report.dense_macs, weight_sparsity=sparsity(model).overall)


def _cmd_compress(args: argparse.Namespace) -> int:
    from ..compress import (
        magnitude_prune,
        prune_attention_heads,
        prune_block_channels,
        prune_mlp_units,
    )
    from ..hub import save_pruned
    check_output(args.out, ('.safetensors',), '--out')
    if not (args.heads or args.mlp or args.channels or args.prune_weights or args.dtype):
        raise ValueError('nothing to do: give --heads, --mlp, --channels, --prune-weights and/or --dtype')
    model = load_model_arg(args.model).eval()
    before = _summary(model)
    if args.heads:
        prune_attention_heads(model, args.heads, scope=args.scope)
    if args.mlp:
        prune_mlp_units(model, args.mlp, scope=args.scope)
    if args.channels:
        prune_block_channels(model, args.channels, scope=args.scope)
    if args.prune_weights:
        magnitude_prune(model, args.prune_weights, scope=args.scope)
    after = _summary(model)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_pruned(model, args.out, extra=dict(compressed_from=args.model), dtype=args.dtype)
    result = dict(model=args.model, out=args.out, size_bytes=os.path.getsize(args.out), before=before, after=after)
    if args.json:
        print(json.dumps(result, indent=1))
        return EXIT_OK
    print(f'{args.out}: {after["parameters"] / 1e6:.3f} M parameters (was {before["parameters"] / 1e6:.3f} M), '
          f'{after["mean_macs"] / 1e6:.2f} MMACs per image at the stored sparsity (was {before["mean_macs"] / 1e6:.2f}), '
          f'{after["weight_sparsity"]:.1%} of the block weights zero, {result["size_bytes"] / 1e6:.2f} MB')
    if args.heads or args.mlp or args.channels or args.prune_weights:
        print(f'fine-tune it to recover accuracy: dynvit finetune {args.out} --data ...')
    return EXIT_OK


def add_parsers(add) -> None:
    """Adds ``compress``."""
    p = add('compress', 'Prune a model (attention heads, MLP units, block channels, weights) and/or store it in '
                        'fp16/bf16; writes a self-describing .safetensors file.', EXAMPLES)
    p.add_argument('model', help='arch.tag (its pretrained weights) or a dynvit .safetensors file')
    p.add_argument('--out', required=True, help='the .safetensors file to write')
    p.add_argument('--heads', type=_fraction, default=0.0, help='ViTs: fraction of attention heads to remove')
    p.add_argument('--mlp', type=_fraction, default=0.0, help='ViTs: fraction of MLP hidden units to remove')
    p.add_argument('--channels', type=_fraction, default=0.0,
                   help='ResNets: fraction of the inner channels of every basic block to remove')
    p.add_argument('--prune-weights', type=_fraction, default=0.0,
                   help='fraction of the block weights to zero by magnitude (smaller files compress better; '
                        'no fewer MACs)')
    p.add_argument('--scope', default='layer', choices=['layer', 'global'],
                   help="'layer': the fraction in every block / layer; 'global': ranked over all of them")
    p.add_argument('--dtype', default=None, choices=['fp32', 'fp16', 'bf16'],
                   help='storage precision (default: the model\'s own)')
    p.add_argument('--json', action='store_true', help='print the result as JSON')
    p.set_defaults(func=_cmd_compress)

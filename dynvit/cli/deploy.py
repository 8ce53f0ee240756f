"""``dynvit export``: a model to an ONNX file that ONNX Runtime (or OpenVINO, TensorRT) runs, with
its sparsity, data config and per-image report outputs."""
import argparse

from ._common import EXIT_OK, load_model_arg, positive_int
from .models import apply_sparsity, knob_args, knob_settings

EXAMPLES = (
    'examples:\n'
    '  dynvit export dynamicvit_pico_patch4_28.fmnist_kr05 dyvit.onnx --dynamic-batch\n'
    '  dynvit export evovit_pico_patch4_28.fmnist_kr05 evo.onnx --keep-ratio 0.4 --batch-size 8\n'
    '  dynvit export fbs_resnet18_half.fmnist_d50 fbs.onnx --density 0.3 --batch-size 1\n'
    '  dynvit predict dyvit.onnx shirt.png         # ONNX Runtime, with kept tokens and MACs per image\n'
    '  dynvit bench dynamicvit_pico_patch4_28.fmnist_kr05 --ort --compare-dense'
)


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from ..export import load_onnx, to_onnx
    if not args.out.endswith('.onnx'):
        raise ValueError(f'the output must be an .onnx file, got {args.out}')
    if args.dynamic_batch and args.batch_size is not None:
        raise ValueError('--batch-size fixes the batch size, --dynamic-batch leaves it open; choose one')
    model = load_model_arg(args.model, args.checkpoint).eval()
    apply_sparsity(model, knob_settings(args))
    to_onnx(model, args.out, batch_size=args.batch_size or 1, dynamic_batch=args.dynamic_batch, opset=args.opset)
    info = load_onnx(args.out).info
    batch = 'any' if info['batch_size'] is None else info['batch_size']
    print(f'{args.out}: {info["architecture"]} ({info["family"]}), input {info["input_size"]}, batch {batch}, '
          f'{json.dumps(info["sparsity"])}')
    print(f'outputs: logits, and per image macs, kept (per stage), kept_masks; run it with: dynvit predict {args.out} '
          f'IMAGE...')
    return EXIT_OK


def add_parsers(add) -> None:
    """Adds ``export``."""
    p = add('export', 'Export a model to ONNX (its fixed-shape inference path: DynamicViT top-k, Evo-ViT, FBS at a '
                      'fixed density) with its sparsity and data config in the metadata.', EXAMPLES)
    p.add_argument('model', help='arch.tag, arch, or a dynvit .safetensors file')
    p.add_argument('out', help='the .onnx file to write')
    p.add_argument('--checkpoint', default=None, help='weights for MODEL (a dynvit, timm or DeiT file)')
    knob_args(p)
    p.add_argument('--batch-size', type=positive_int, default=None, help='a fixed batch size (default 1)')
    p.add_argument('--dynamic-batch', action='store_true',
                   help='any batch size (token-sparse ViTs; FBS graphs need a fixed one)')
    p.add_argument('--opset', type=positive_int, default=None, help='ONNX opset (default: the exporter\'s)')
    p.set_defaults(func=_cmd_export)

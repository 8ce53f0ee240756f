"""``dynvit export``: a model to an ONNX file that ONNX Runtime (or OpenVINO, TensorRT) runs, with
its sparsity, data config and per-image report outputs."""
import argparse

from ._common import (
    CHECKPOINT_HELP,
    EXIT_OK,
    apply_sparsity,
    check_output,
    example_family,
    knob_args,
    knob_example,
    knob_settings,
    load_model_arg,
    positive_int,
)

_TOKENS, _CHANNELS = example_family('patches'), example_family('channels')
EXAMPLES = (
    'examples:\n'
    f'  dynvit export {_TOKENS.example} model.onnx --dynamic-batch\n'
    f'  dynvit export {knob_example(_TOKENS)} model.onnx --batch-size 8\n'
    f'  dynvit export {knob_example(_CHANNELS)} gated.onnx --batch-size 1\n'
    '  dynvit predict model.onnx shirt.png         # ONNX Runtime, with kept tokens and MACs per image\n'
    f'  dynvit bench {_TOKENS.example} --ort --compare-dense'
)


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from ..export import load_onnx, to_onnx
    check_output(args.out, ('.onnx',), 'OUT')
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
    p = add('export', 'Export a model to ONNX (its fixed-shape inference path: a fixed number of tokens or channels '
                      'per image) with its sparsity and data config in the metadata.', EXAMPLES)
    p.add_argument('model', help='arch.tag, arch, or a dynvit .safetensors file')
    p.add_argument('out', help='the .onnx file to write')
    p.add_argument('--checkpoint', default=None, help=CHECKPOINT_HELP)
    knob_args(p)
    p.add_argument('--batch-size', type=positive_int, default=None, help='a fixed batch size (default 1)')
    p.add_argument('--dynamic-batch', action='store_true',
                   help='any batch size (token models; channel-gated graphs need a fixed one)')
    p.add_argument('--opset', type=positive_int, default=None, help='ONNX opset (default: the exporter\'s)')
    p.set_defaults(func=_cmd_export)

"""``dynvit list | info | predict | viz | convert | bench``: looking at models, running them on images,
converting checkpoints."""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..families import knob_options
from ._common import (
    CHECKPOINT_HELP,
    EXIT_OK,
    EXIT_SOME_IMAGES_FAILED,
    apply_sparsity,
    check_output,
    example_family,
    int8_arg,
    knob_args,
    knob_example,
    knob_settings,
    load_model_arg,
    maybe_int8,
    picture_suffixes,
    positive_int,
    probability,
    report_skipped,
    untrained_parts,
)

_TOKENS, _CHANNELS = example_family('patches'), example_family('channels')
_ARCH = _TOKENS.example.split('.')[0]
EXAMPLES = {
    'list': 'with --pretrained, where the weights are: shipped (in the package: offline), cached (downloaded\n'
            'before: offline) or download (fetched on first use); then the zoo card\'s test accuracy and MACs,\n'
            'or what the weights are. The internal test_* models (tiny, for the tests) are listed with --all\n'
            'or a pattern naming them.\n\n'
            f'examples:\n  dynvit list\n  dynvit list "{_TOKENS.arch_prefixes[0]}*" --pretrained\n'
            '  dynvit list fmnist --pretrained\n'
            '  dynvit list --pretrained --json\n  dynvit list test_              # the internal test models',
    'info': f'examples:\n  dynvit info {_ARCH}\n  dynvit info {_CHANNELS.example}\n'
            + ''.join(f'  dynvit info {knob_example(o.families[0])}\n' for o in knob_options())
            + f'  dynvit info {_TOKENS.example} --json',
    'predict': f'examples:\n  dynvit predict {_TOKENS.example} shirt.png boot.jpg\n'
               f'  dynvit predict {knob_example(_CHANNELS)} photos/ --topk 3 --json\n'
               f'  dynvit predict runs/fm/best.safetensors a.png {_TOKENS.flag} {_TOKENS.example_value} --viz kept.png\n'
               '  dynvit predict MODEL photos/ --threshold 0.5   # a model with a threshold mode\n'
               f'  dynvit predict {_TOKENS.example} mydata/ --recursive   # mydata/cat/*.jpg, mydata/dog/*.jpg\n'
               'exit codes: 0 all images predicted, 1 error (model, arguments), 2 usage, '
               '3 some images could not be read (the others were predicted)',
    'viz': f'examples:\n  dynvit viz {_TOKENS.example} photos/ --out grid.png\n'
           f'  dynvit viz {knob_example(_CHANNELS)} a.png b.png --out channels.png --size 96',
    'convert': 'examples:\n  dynvit list official --pretrained     # the tags of the official checkpoints\n'
               '  dynvit convert official.pth model.safetensors --model ARCH.TAG\n'
               '  dynvit predict model.safetensors photo.jpg',
    'bench': f'examples:\n  dynvit bench {_TOKENS.example} --compare-dense\n'
             f'  dynvit bench {_CHANNELS.example} --batch-size 1 32 --threads 2 --json\n'
             f'  dynvit bench {_ARCH} {_TOKENS.flag} {_TOKENS.example_value} --batch-size 1 --compare-dense',
}


# ---- loading a model to run ----

def _sparsity_args(p: argparse.ArgumentParser, threshold: bool = True) -> None:
    p.add_argument('--checkpoint', default=None, help=CHECKPOINT_HELP)
    p.add_argument('--pretrained', action='store_true', help='load the default pretrained weights of an arch name')
    knob_args(p)
    if threshold:
        p.add_argument('--threshold', type=probability, default=None,
                       help='models with a threshold mode: keep the tokens whose keep probability reaches T (the '
                            'count varies per image) (default: none, the knob\'s fixed counts)')
    p.add_argument('--threads', type=int, default=0, help='CPU threads (default: torch\'s)')
    int8_arg(p)


def _model(args: argparse.Namespace):
    """The model to run, eager: its sparsity from the flags, INT8 with ``--int8``. An ``.onnx``
    file is run by ONNX Runtime (its sparsity was fixed at export)."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model.endswith('.onnx'):
        flags = ('checkpoint', 'pretrained', *(o.dest for o in knob_options()), 'threshold', 'int8', 'compile')
        given = [f for f in flags if getattr(args, f, None) is not None and getattr(args, f) is not False]
        if given:
            settings = ' / '.join(f'{o.flag} VALUE' for o in knob_options())
            raise ValueError(f'an ONNX file runs as it was exported; --{given[0].replace("_", "-")} does not apply '
                             f'(export again with its settings: dynvit export MODEL OUT.onnx {settings})')
        from ..export import load_onnx
        return load_onnx(args.model, args.threads)
    model = load_model_arg(args.model, args.checkpoint, args.pretrained).eval()
    apply_sparsity(model, knob_settings(args), getattr(args, 'threshold', None))
    return maybe_int8(model, args)


def _deployed(model, args: argparse.Namespace, batch_size: int = 1):
    """``model`` on the backend the flags ask for: ``--compile`` (torch.compile, whole graph, symbolic
    batch) or ``--ort`` (exported to a temporary ONNX file for this batch size, run by ONNX Runtime)."""
    if getattr(args, 'compile', False):
        from ..export import compile_model
        return compile_model(model)
    if getattr(args, 'ort', False):
        import tempfile
        from ..export import load_onnx, to_onnx
        with tempfile.TemporaryDirectory() as tmp:
            return load_onnx(to_onnx(model, f'{tmp}/model.onnx', batch_size=batch_size), args.threads)
    return model


def _recursive_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument('--recursive', action='store_true',
                   help='also the images in the subfolders of folders (e.g. a folder per class), in path order')


# ---- commands ----

INTERNAL_PREFIX = 'test_'  # tiny configurations for the tests: listed only when asked for


def _cmd_list(args: argparse.Namespace) -> int:
    from ..hub import list_models, pretrained_info
    pattern = (args.pattern or '').lower()  # every name is lower case
    if pattern and not any(c in pattern for c in '*?['):  # a plain word matches anywhere in the name
        pattern = f'*{pattern}*'
    internal = args.all or 'test' in pattern  # `dynvit list test_` names them

    def shown(pretrained: bool) -> List[str]:
        return [n for n in list_models(pattern, pretrained=pretrained) if internal or not n.startswith(INTERNAL_PREFIX)]

    names = shown(args.pretrained)
    if not args.pretrained and pattern:  # a word only pretrained tags hold (fmnist, deit): those arch.tag names
        tagged = [n for n in shown(True) if n.split('.')[0] not in names]
        if tagged and not args.json:
            print(f'dynvit list: {len(tagged)} pretrained tag(s) match {args.pattern!r} (arch.tag names; `dynvit list '
                  f'{args.pattern} --pretrained` shows their weights and accuracy)', file=sys.stderr)
        names += tagged
    if not names:
        hidden = not internal and bool(list_models(pattern) + list_models(pattern, pretrained=True))
        print(f'dynvit list: {_nothing_matched(args, hidden, len(shown(False)))}', file=sys.stderr)
        if not args.json:
            return EXIT_OK
    if not args.pretrained:
        print(json.dumps(names) if args.json else '\n'.join(names))
        return EXIT_OK
    rows = [pretrained_info(n) for n in names]
    print(json.dumps(rows, indent=1) if args.json else _pretrained_table(rows))
    return EXIT_OK


def _nothing_matched(args: argparse.Namespace, hidden: bool, without_weights: int) -> str:
    """Why ``dynvit list PATTERN`` shows nothing, and what would show something.

    Args:
        args: The command's arguments.
        hidden: Internal test models match (not listed without ``--all``).
        without_weights: Models whose name matches (``--pretrained`` lists only those with weights).
    """
    if hidden:
        return f'only internal test models match {args.pattern!r}: `dynvit list {args.pattern} --all` lists them'
    if args.pretrained and without_weights:
        return (f'no pretrained weights match {args.pattern!r}, but {without_weights} model(s) without weights do: '
                f'`dynvit list {args.pattern}`')
    return (f'no model name or pretrained tag matches {args.pattern!r}; `dynvit list` shows every model, `dynvit '
            f'list --pretrained` every arch.tag with weights')


def _pretrained_table(rows: List[Dict[str, Any]]) -> str:
    """One line per tag: name, where its weights are (shipped / cached / download), description."""
    width = max((len(r['name']) for r in rows), default=0)
    return '\n'.join(f'{r["name"]:<{width}}  {r["weights"]:<8}  {r["description"]}' for r in rows)


def _weights_source(cfg: Dict[str, Any]) -> str:
    if cfg.get('file'):
        return f'local file {cfg["file"]}'
    if cfg.get('hf_hub_id'):
        return f'Hugging Face Hub {cfg["hf_hub_id"]} (downloaded with pretrained=True)'
    if cfg.get('url'):
        return f'{cfg["url"]} (downloaded with pretrained=True)'
    return 'none (random initialisation)'


def _cmd_info(args: argparse.Namespace) -> int:
    import torch
    from timm.models import get_pretrained_cfg
    from ..hub import create_model, model_and_file
    from ..models import model_input_size
    from ..runtime import profile
    # the numbers need no weights: a file, or a tag with a local file (the zoo), is loaded for its
    # stored configuration; other names are built without downloading anything
    name, file = model_and_file(args.model)
    args.model = args.model if file else name  # a renamed zoo name: its current one
    cfg = get_pretrained_cfg(args.model) if '.' in args.model and not file else None
    local = bool(file or cfg is not None and getattr(cfg, 'file', None) and Path(cfg.file).is_file())
    model = (load_model_arg(args.model, quiet=True) if local else create_model(args.model)).eval()
    weights_loaded = local or '.' not in args.model  # a hub tag's weights are not loaded here
    apply_sparsity(model, knob_settings(args))
    c, h, w = model_input_size(model)
    _, report = profile(model, torch.zeros(1, c, h, w))
    info = dict(
        model=args.model,
        architecture=type(model).__name__,
        params=sum(p.numel() for p in model.parameters()),
        input_size=[c, h, w],
        num_classes=model.num_classes,
        family=getattr(model, 'family', None) or None,
        sparsity=model.sparsity_config() if getattr(model, 'sparsity_knob', None) else None,
        sparsity_knob=getattr(model, 'sparsity_knob', None) or None,
        knob_meaning=getattr(model, 'sparsity_meaning', None) or None,
        dense_gmacs=report.dense_macs / 1e9,
        sparse_gmacs=report.mean_macs / 1e9,
        saved_fraction=1 - report.mean_macs / report.dense_macs,
        weights=f'local file {file}' if file else _weights_source(model.pretrained_cfg if '.' in args.model else {}),
        untrained=untrained_parts(model) if weights_loaded else None,
        paper=model.pretrained_cfg.get('paper_ids'),
    )
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        info['untrained'] = f'{model.sparse_label} ({model.untrained_sparse})' if info['untrained'] else \
            'unknown (the weights are not loaded)' if info['untrained'] is None else 'none'
        for k, v in info.items():
            print(f'{k:>15}: {v:.4f}' if isinstance(v, float) else f'{k:>15}: {v}')
    return EXIT_OK


def kept_text(pred) -> str:
    """'960/1920 gated channels' (CNNs) or '24/12/6 of 49 patches' (ViTs)."""
    if pred.is_cnn:
        return f'{sum(pred.kept)}/{sum(pred.total)} gated channels'
    return '/'.join(str(k) for k in pred.kept) + f' of {pred.total[0]} patches'


NONE_READABLE = 'none of the given paths is a readable image'


def _predict(args: argparse.Namespace, input_size: int):
    """The model and its predictions on the images, streamed (read and predicted a batch at a
    time); the paths that give no image are named on stderr at once, before the model is loaded
    (``--recursive``: the subfolders' images too), the unreadable files as they come (``errors``,
    filled while the predictions are read).

    Args:
        args: The command's arguments.
        input_size: Keep each prediction's input this many pixels high for the picture (0: not kept).

    Returns:
        ``(model, predictions, errors, skipped)``.
    """
    from ..predict import list_images, predict_files
    files, errors, skipped = list_images(args.images, recursive=args.recursive)  # before the model: fails fast
    report_skipped(args.command, skipped)
    if not files and len(errors) == 1:  # one path, one reason: the error says it
        raise ValueError(': '.join(errors[0]))
    report_skipped(args.command, errors)
    if not files:
        raise ValueError(NONE_READABLE)
    model = _model(args)
    if getattr(args, 'compile', False):
        model = _deployed(model, args)

    def unreadable(path: str, reason: str) -> None:
        errors.append((path, reason))
        report_skipped(args.command, [(path, reason)])

    streams_text = args.command == 'predict' and not args.json  # the results themselves show the progress
    preds = predict_files(model, files, topk=getattr(args, 'topk', 1), batch_size=args.batch_size,
                          progress=not streams_text and sys.stderr.isatty(), input_size=input_size,
                          on_error=unreadable)
    return model, preds, errors, skipped


def _write_picture(preds, path: str, size: int, title: str) -> None:
    from ..viz import prediction_grid
    if not preds:
        raise ValueError(NONE_READABLE)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    prediction_grid(preds, size=size, title=title).save(path)


def _title(args: argparse.Namespace, model) -> str:
    """The picture's title: 'MODEL: keep_ratio 0.65/0.4225/0.2746' (``model.sparsity_text()``)."""
    return f'{args.model}: {model.sparsity_text()}'


def _prediction_text(pred) -> str:
    """A prediction's three lines: the image, its top-k classes, what it kept and spent."""
    return (f'{pred.source}\n  ' + '   '.join(f'{n} {q:.3f}' for _, n, q in pred.topk) +
            f'\n  kept {kept_text(pred)}; {pred.macs / 1e6:.2f} MMACs of {pred.dense_macs / 1e6:.2f} dense, '
            f'{pred.saved_fraction:.1%} saved')


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.viz:
        check_output(args.viz, picture_suffixes(), '--viz')
    from ..data import describe_input
    model, preds, errors, skipped = _predict(args, input_size=args.size if args.viz else 0)
    if not args.json:  # what the model sees of every image, before the first result
        print(f'{args.model} sees each image as {describe_input(model)}', flush=True)
    drawn, results, count = [], [], 0  # the pictures' predictions (small inputs), the JSON entries
    for p in preds:
        count += 1
        if args.viz:
            drawn.append(p)
        if args.json:
            results.append(p.to_json())
        else:
            print(_prediction_text(p), flush=True)  # as each batch comes
    if not count:
        raise ValueError(NONE_READABLE)
    if args.viz:
        _write_picture(drawn, args.viz, args.size, _title(args, model))
    if args.json:
        print(json.dumps(dict(model=args.model, input=describe_input(model), untrained=untrained_parts(model),
                              predictions=results,
                              errors=[dict(image=i, error=e) for i, e in errors],
                              skipped=[dict(file=f, reason=r) for f, r in skipped],
                              picture=args.viz or None), indent=1))
    elif args.viz:
        print(f'picture: {args.viz}')
    return EXIT_SOME_IMAGES_FAILED if errors else EXIT_OK


def _cmd_viz(args: argparse.Namespace) -> int:
    check_output(args.out, picture_suffixes(), '--out')
    model, preds, errors, _ = _predict(args, input_size=args.size)
    preds = list(preds)
    _write_picture(preds, args.out, args.size, _title(args, model))
    print(f'{len(preds)} image(s) drawn: {args.out}')
    return EXIT_SOME_IMAGES_FAILED if errors else EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch
    from ..models import model_input_size
    from ..runtime import median_latencies, smooth_images
    if args.compile and args.ort:
        raise ValueError('--compile and --ort are two backends; choose one')
    model = _model(args)
    eager = {'model': model}
    if args.compare_dense:
        if args.model.endswith('.onnx'):
            raise ValueError('an ONNX file holds one network: to compare with the dense twin on ONNX Runtime, '
                             'give the model (name or .safetensors) with --ort')
        eager['dense'] = model.dense_copy().eval()
    c, h, w = model_input_size(model)  # an ONNX file's from the data config it carries
    gen = torch.Generator().manual_seed(0)
    rows: List[Dict[str, Any]] = []
    for bs in args.batch_size:
        x = smooth_images(bs, (c, h, w), gen)
        models = {k: _deployed(m, args, bs) for k, m in eager.items()}
        times = median_latencies(models, x, args.rounds, max(1, args.runs // args.rounds))
        with torch.inference_mode():
            _, aux = models['model'](x, return_aux=True)
        row = dict(batch_size=bs, ms=times['model'] * 1e3, images_per_s=bs / times['model'],
                   mean_macs=aux.macs.double().mean().item(), dense_macs=aux.dense_macs)
        if 'dense' in times:
            row.update(dense_ms=times['dense'] * 1e3, speedup=times['dense'] / times['model'])
        rows.append(row)
        if not args.json:
            print(f'batch {bs:>4}: {row["ms"]:9.2f} ms  {row["images_per_s"]:9.1f} img/s  '
                  f'{row["mean_macs"] / 1e6:.2f} MMACs/image ({1 - row["mean_macs"] / row["dense_macs"]:.1%} saved)'
                  + (f'   dense {row["dense_ms"]:9.2f} ms  speed-up {row["speedup"]:.2f}x' if 'dense' in times else ''))
    backend = 'torch.compile' if args.compile else 'onnxruntime' if args.ort or args.model.endswith('.onnx') else 'eager'
    if args.json:
        print(json.dumps(dict(model=args.model, backend=backend, threads=torch.get_num_threads(), rows=rows), indent=1))
    else:
        print(f'median of {max(1, args.runs // args.rounds) * args.rounds} forwards, {torch.get_num_threads()} threads, '
              f'{backend}')
    return EXIT_OK



def _cmd_convert(args: argparse.Namespace) -> int:
    from ..hub import create_model, read_dynvit_metadata, read_state_dict, save_model
    kwargs = json.loads(args.model_args) if args.model_args else {}
    if not isinstance(kwargs, dict):
        raise ValueError(f'--model-args must be a JSON object, got {args.model_args!r}')
    if not Path(args.input).is_file():
        raise FileNotFoundError(f'checkpoint file not found: {args.input}')
    check_output(args.output, ('.safetensors',), 'OUTPUT')  # self-describing
    raw = read_state_dict(args.input)
    overlay = dict(file=args.input)
    if 'num_classes' in kwargs:  # the checkpoint's own head size: keep its classifier (timm drops a mismatching one)
        overlay['num_classes'] = kwargs['num_classes']
    model = create_model(args.model, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()
    for prefix, what in model.foreign_parts().items():
        if any(k.startswith(prefix) for k in raw):
            raise ValueError(f'{args.input} holds {what} ({prefix}*), which {type(model).__name__} would drop: '
                             f'convert it with the architecture it was trained as')
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    save_model(model, args.output)
    meta = read_dynvit_metadata(args.output)
    config = model.sparsity_config()
    print(f'{args.output}: {meta["architecture"]}, {len(model.state_dict())} tensors, '
          f'{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, {json.dumps(config)}')
    print(f'load it with dynvit.create_model({args.model!r}, pretrained=True, '
          f'pretrained_cfg_overlay=dict(file={args.output!r})) or dynvit.load_model({args.output!r})')
    return EXIT_OK


def add_parsers(add) -> None:
    """Adds ``list``, ``info``, ``predict``, ``viz`` and ``bench``; ``add(name, help, examples)`` makes a subparser."""
    p = add('list', 'List the registered dynvit models, or the arch.tag names that have weights (--pretrained).',
            EXAMPLES['list'])
    p.add_argument('pattern', nargs='?', help='wildcard filter, e.g. "*_patch16_224"; a plain word matches anywhere '
                                              'in the name (fmnist)')
    p.add_argument('--pretrained', action='store_true', help='list arch.tag names that have weights, with where '
                                                             'they are and what they are')
    p.add_argument('--all', action='store_true', help='also the internal test_* models')
    p.add_argument('--json', action='store_true', help='print JSON: the names, or with --pretrained one object per '
                                                       'tag (name, weights, source, description, dataset, top1, '
                                                       'top5, macs, saved_fraction)')
    p.set_defaults(func=_cmd_list)

    p = add('info', 'Architecture, sparsity config, parameters, dense vs sparse MACs and weights source of a model.',
            EXAMPLES['info'])
    p.add_argument('model')
    knob_args(p)
    p.add_argument('--json', action='store_true', help='print the result as JSON')
    p.set_defaults(func=_cmd_info)

    p = add('predict', 'Top-k classes of images, with what each image kept and the MACs it saved.',
            EXAMPLES['predict'])
    p.add_argument('model', help='arch.tag (its pretrained weights), arch, a dynvit .safetensors file or an '
                                 'exported .onnx file (run by ONNX Runtime)')
    p.add_argument('images', nargs='+', help='image files or folders (PNG, JPEG, WebP, ...)')
    _recursive_arg(p)
    _sparsity_args(p)
    p.add_argument('--compile', action='store_true', help='run it compiled (torch.compile, whole graph)')
    p.add_argument('--topk', type=positive_int, default=5, help='classes shown per image')
    p.add_argument('--batch-size', type=positive_int, default=16, help='images per forward')
    p.add_argument('--viz', default=None, metavar='OUT.png',
                   help='also draw the kept tokens / channels per image (.png, .jpg, .webp, .pdf, ...) (default: no '
                        'picture)')
    p.add_argument('--size', type=positive_int, default=112, help='picture: panel height in pixels')
    p.add_argument('--json', action='store_true', help='print the result as JSON')
    p.set_defaults(func=_cmd_predict)

    p = add('viz', 'Draw a grid: each image with the patches dropped at each stage marked (ViTs: dimmed, tinted, '
                   'hatched; fused ones tinted orange), the tokens its patches were merged into (merging ViTs: each '
                   'in its patches\' mean colour) or a map of the channels each gated layer kept (CNNs), under a '
                   'legend.', EXAMPLES['viz'])
    p.add_argument('model', help='arch.tag, arch, or a dynvit .safetensors file')
    p.add_argument('images', nargs='+', help='image files or folders')
    _recursive_arg(p)
    _sparsity_args(p)
    p.add_argument('--out', required=True, help='the picture to write (.png, .jpg, ...)')
    p.add_argument('--size', type=positive_int, default=112, help='panel height in pixels')
    p.add_argument('--batch-size', type=positive_int, default=16, help='images per forward')
    p.set_defaults(func=_cmd_viz)

    p = add('convert', 'Convert a checkpoint (an official .pth of a method\'s authors, timm, DeiT) once into a '
                       'self-describing dynvit .safetensors file (no pickled code is run).', EXAMPLES['convert'])
    p.add_argument('input', help='the checkpoint (.pth / .bin / .safetensors; ckpt["model"] is unwrapped)')
    p.add_argument('output', help='the .safetensors file to write')
    p.add_argument('--model', required=True, help='arch.tag it belongs to, an official tag (dynvit list official '
                                                   '--pretrained): the tag brings its sparsity settings')
    p.add_argument('--model-args', default=None,
                   help='JSON constructor arguments overriding the tag\'s (e.g. num_classes of a checkpoint '
                        'fine-tuned on other classes) (default: none)')
    p.set_defaults(func=_cmd_convert)

    p = add('bench', 'Median latency and throughput of a model on the CPU (or its device), optionally against '
                     'the same network with sparsity off.', EXAMPLES['bench'])
    p.add_argument('model', help='arch.tag, arch, a dynvit .safetensors file or an exported .onnx file')
    _sparsity_args(p)
    p.add_argument('--batch-size', type=positive_int, nargs='+', default=[1, 32], help='batch sizes to time')
    p.add_argument('--compare-dense', action='store_true', help='also time it with keep ratio / density 1.0')
    p.add_argument('--compile', action='store_true',
                   help='time both compiled (torch.compile, whole graph; compiling takes a while)')
    p.add_argument('--ort', action='store_true', help='time both exported to ONNX and run by ONNX Runtime')
    p.add_argument('--rounds', type=positive_int, default=5, help='rounds the models take turns in')
    p.add_argument('--runs', type=positive_int, default=20, help='timed forwards per model and batch size')
    p.add_argument('--json', action='store_true', help='print the result as JSON')
    p.set_defaults(func=_cmd_bench)

"""Helpers the commands share: loading the model a command names, argument types, --int8.

Nothing here imports torch at module level: ``dynvit --help`` must stay fast.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..families import FamilySpec, all_specs, knob_options

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_IMAGES_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

CHECKPOINT_HELP = "weights for MODEL (a dynvit, timm or DeiT file) (default: an arch.tag's own; a bare arch is random)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with the examples as written and every option's default (where it has one that
    says something: not None, not an off switch, not already named in the help text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if (not action.option_strings or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or 'default' in text):  # `is`: 0 is a default to show
            return text
        return f'{text} (default: %(default)s)'


def load_model_arg(name: str, checkpoint: Optional[str] = None, pretrained: bool = False, quiet: bool = False,
                   **kwargs: Any):
    """The model a command names (``dynvit.hub.resolve_model``); a note on stderr when its weights
    are random, or its keep predictors / gates untrained."""
    from ..hub import resolve_model
    model, source = resolve_model(name, checkpoint, pretrained, **kwargs)
    note = f'{name} has random weights (give arch.tag, --pretrained or --checkpoint for trained ones)' \
        if source == 'random' else untrained_note(name, model)
    if note and not quiet:
        print(f'note: {note}', file=sys.stderr)
    return model


def weights_error_message(error: Exception, args: argparse.Namespace) -> Optional[str]:
    """The one-line message for pretrained weights that could not be downloaded
    (``dynvit.hub.PretrainedWeightsError`` with a source): why, and how to give a copy downloaded
    elsewhere on this command line (``--checkpoint PATH`` where the command has it for that model,
    else a converted file in the model's place). None for any other error."""
    hub = sys.modules.get('dynvit.hub')  # imported by whatever raised it; the check itself imports no torch
    if hub is None or not isinstance(error, hub.PretrainedWeightsError) or not error.source:
        return None
    name = error.model_name
    if getattr(args, 'model', None) == name and hasattr(args, 'checkpoint'):
        how = (f'give it with --checkpoint PATH (dynvit {args.command} {name} ... --checkpoint '
               f'path/to/weights.pth)')
    else:
        how = (f'convert it once (dynvit convert path/to/weights.pth weights.safetensors --model {name}) and '
               f'give weights.safetensors in place of {name}')
    return f'{error.reason}; download {error.source} elsewhere and {how}'


def untrained_note(name: str, model) -> Optional[str]:
    """What the model's untrained keep predictors / gates mean for its output, or None when they
    were trained (or the model selects by a rule)."""
    why = getattr(model, 'untrained_sparse', None)
    if not why:
        return None
    return (f'the {model.sparse_label} of {name} were not trained ({why}); its choices of {model.kept_unit} are not '
            f'meaningful until fine-tuned (dynvit finetune)')


def untrained_parts(model) -> List[str]:
    """The model's parts that were not trained (``['keep predictors']``), for JSON output."""
    return [model.sparse_label] if getattr(model, 'untrained_sparse', None) else []


def report_skipped(command: str, skipped) -> None:
    """Names on stderr, one line each, the files that were not processed: ``[(path, reason)]``."""
    for path, reason in skipped:
        print(f'dynvit {command}: skipped {path}: {reason}', file=sys.stderr)


def report_skipped_count(command: str, folder: str, skipped) -> None:
    """One start-up line: how many files of a training folder are skipped (not images, or unreadable
    with --skip-unreadable), and the first of them."""
    if skipped:
        shown = ', '.join(skipped[:3]) + (f' and {len(skipped) - 3} more' if len(skipped) > 3 else '')
        print(f'dynvit {command}: {len(skipped)} file(s) in {folder} are skipped (not images dynvit reads, or '
              f'unreadable with --skip-unreadable): {shown}', file=sys.stderr)


# the picture types the commands write (--out, --viz): those PIL can save an RGB picture as and dynvit reads back
PICTURE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.gif', '.tif', '.tiff', '.pdf')


def picture_suffixes() -> Tuple[str, ...]:
    """``PICTURE_SUFFIXES`` that this installation's PIL can save (WebP needs libwebp)."""
    from PIL import Image
    Image.init()
    saved = {suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.SAVE}
    return tuple(s for s in PICTURE_SUFFIXES if s in saved)


def check_output(path: str, suffixes: Sequence[str], option: str) -> None:
    """Fails before any work (loading a model, running it) when a command could not write its output
    file at the end: a type not in ``suffixes``, a folder given as the file, or a folder that cannot be
    made or written in.

    Args:
        path: The file to write (its folders are made when missing).
        suffixes: The file types the command writes, lower case with the dot (``('.onnx',)``).
        option: How the command line names it in messages (``'--out'``, ``'OUT'``).

    Raises:
        ValueError: One line naming the problem and what to give instead.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    kinds = f'one of {" ".join(suffixes)}' if len(suffixes) > 1 else suffixes[0]
    if target.is_dir():
        name = 'out' + (suffix if suffix in suffixes else suffixes[0])
        raise ValueError(f'{option} {path} is a folder; give a file name in it ({target / name})')
    if suffix not in suffixes:
        given = f'dynvit cannot write {target.suffix} files' if suffix else 'no file type'
        raise ValueError(f'{option} {path}: {given}; give a file name ending in {kinds}')
    folder = target.parent
    while not folder.exists() and folder != folder.parent:  # the folder that exists, where the missing ones are made
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f'{option} {path}: cannot be written, {folder} is a file, not a folder')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f'{option} {path}: cannot be written, no permission to write in {folder}')


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a bad value is a usage error, exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None


def fraction(text: str) -> float:
    """An argparse type: a number in (0, 1] (keep ratios, densities); out of range is bad usage (exit 2)."""
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f'must be in (0, 1], got {text}')
    return value


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1] (thresholds); out of range is bad usage (exit 2)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'must be in [0, 1], got {text}')
    return value


def merge_counts(text: str) -> Union[int, List[int], Tuple[int, float]]:
    """An argparse type: tokens merged per block, ``R`` (every block), ``R1,R2,...`` (one per
    block) or ``R:INFLECT`` (a released schedule's shape, e.g. ``16:-1``); bad syntax or a
    negative count is bad usage (exit 2)."""
    count, _, inflect = text.partition(':')
    try:
        values = [int(v) for v in count.split(',')]
        shape = float(inflect) if inflect else None
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected R, R1,R2,... or R:INFLECT (whole numbers), got {text!r}') from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f'token counts must be >= 0, got {text}')
    if shape is not None:
        if len(values) != 1:
            raise argparse.ArgumentTypeError(f'INFLECT shapes a single R (R:INFLECT), got {text!r}')
        return values[0], shape
    return values[0] if len(values) == 1 and ',' not in count else values


def int8_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument('--int8', action='store_true',
                   help='run the linear layers in INT8 (dynamic quantization, CPU; keep predictors and gates stay float)')


def maybe_int8(model, args: argparse.Namespace):
    """``--int8``: the INT8 copy of ``model`` (``dynvit.compress.quantize_int8``)."""
    if not getattr(args, 'int8', False):
        return model
    from ..compress import quantize_int8
    return quantize_int8(model)


# ---- the sparsity knob: one flag per knob of the families (``dynvit.families``) ----

_FLAG_TYPES = {'fraction': fraction, 'counts': merge_counts}


def knob_args(p: argparse.ArgumentParser, target: bool = False) -> None:
    """One flag per knob of the families (``--keep-ratio``, ...), each saying what one value means
    for each family that takes it (``target``: the knob of a training run)."""
    for option in knob_options():
        p.add_argument(option.flag, type=_FLAG_TYPES[option.flag_type], default=None, help=option.help(target),
                       **({'metavar': 'R'} if option.flag_type == 'counts' else {}))


def knob_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """``{knob: value}`` of the knob flags given (``knob_args``); flags not given are left out."""
    values = {option.knob: getattr(args, option.dest, None) for option in knob_options()}
    return {knob: v for knob, v in values.items() if v is not None}


def apply_sparsity(model, knobs: Dict[str, Any], threshold: Optional[float] = None) -> None:
    """Sets the model's sparsity knob from the knob flags (``knobs``, from ``knob_settings``), or its
    threshold mode (``--threshold``); a flag the model has no setting for is named with the one it
    takes. Every command sets the knob this way, after building the model."""
    flag = {option.knob: option.flag for option in knob_options()}
    own = getattr(model, 'sparsity_knob', None)  # None: a plain timm model
    wrong = [knob for knob in knobs if knob != own]
    if wrong:
        if own is None:
            raise ValueError(f'{type(model).__name__} is not a dynvit model: it has no sparsity settings')
        raise ValueError(f'{flag[wrong[0]]} is not a setting of {model.family} models ({type(model).__name__}); '
                         f'they take {flag.get(own, own)} ({model.sparsity_meaning})')
    if own in knobs:
        model.set_sparsity(**{own: knobs[own]})
    if threshold is not None:
        if own is None or 'threshold' not in model.sparsity_settings():
            raise ValueError(f'--threshold is for models with a threshold mode (keep the tokens whose keep probability '
                             f'reaches it); {type(model).__name__} has no threshold mode')
        model.set_sparsity(threshold=threshold, mode='threshold')


def example_family(kept_unit: str) -> FamilySpec:
    """The first family whose models keep ``kept_unit`` ('patches', 'channels'): help texts show
    its example model (``spec.example``, a zoo model, offline) with its knob's flag and value."""
    return next(s for s in all_specs() if s.kept_unit == kept_unit and s.example)


def knob_example(spec: FamilySpec) -> str:
    """``'MODEL --flag VALUE'`` of a family's example."""
    return f'{spec.example} {spec.flag} {spec.example_value}'

"""Helpers the commands share: loading the model a command names, argument types, --int8.

Nothing here imports torch at module level: ``dynvit --help`` must stay fast.
"""
import argparse
import sys
from typing import Any, List, Optional, Tuple, Union

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_IMAGES_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with the examples as written and every option's default (where it has one that
    says something: not None, not an off switch, not already named in the help text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if (not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or 'default' in text):
            return text
        return f'{text} (default: %(default)s)'


def load_model_arg(name: str, checkpoint: Optional[str] = None, pretrained: bool = False, quiet: bool = False,
                   **kwargs: Any):
    """The model a command names (``dynvit.hub.resolve_model``); a note on stderr when its weights
    are random."""
    from ..hub import resolve_model
    model, source = resolve_model(name, checkpoint, pretrained, **kwargs)
    if source == 'random' and not quiet:
        print(f'note: {name} has random weights (give arch.tag, --pretrained or --checkpoint for trained ones)',
              file=sys.stderr)
    return model


def report_skipped(command: str, skipped) -> None:
    """Names on stderr, one line each, the files that were not processed: ``[(path, reason)]``."""
    for path, reason in skipped:
        print(f'dynvit {command}: skipped {path}: {reason}', file=sys.stderr)


def report_skipped_count(command: str, folder: str, skipped) -> None:
    """One start-up line: how many files of a training folder are not images, and the first of them."""
    if skipped:
        shown = ', '.join(skipped[:3]) + (f' and {len(skipped) - 3} more' if len(skipped) > 3 else '')
        print(f'dynvit {command}: {len(skipped)} file(s) in {folder} are not images dynvit reads and are skipped: '
              f'{shown}', file=sys.stderr)


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
    block) or ``R:INFLECT`` (the released ToMe schedule, e.g. ``16:-1``); bad syntax or a
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

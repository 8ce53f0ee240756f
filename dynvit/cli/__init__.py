"""The ``dynvit`` command line.

``list | info | predict | viz | convert | bench | export | demo | finetune | eval | compress``; ``dynvit COMMAND --help`` shows
examples. Exit codes: 0 success, 1 an error (named on stderr in one line), 2 bad usage
(argparse), 3 some images could not be read while the others were processed, 130 interrupted.
"""
import argparse
import os
import signal
import sys
import threading
import warnings
from typing import List, Optional

from . import compress, demo, deploy, models, training
from ._common import EXIT_ERROR, EXIT_INTERRUPTED, HelpFormatter, weights_error_message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='dynvit', description='Dynamic sparse vision models on timm: token-pruning ViTs and channel-gated CNNs.',
        epilog='exit codes: 0 ok, 1 error, 2 usage, 3 some images unreadable (others done), 130 interrupted',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    def add(name: str, help: str, examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=examples, formatter_class=HelpFormatter)

    models.add_parsers(add)
    demo.add_parsers(add)
    training.add_parsers(add)
    compress.add_parsers(add)
    deploy.add_parsers(add)
    return parser


def _import_heavy_libraries() -> None:
    """Imports torch and timm with Ctrl-C held until they are loaded, then honours it: an interrupt
    inside an extension module's import leaves it half-loaded, and a library that catches
    import failures broadly swallows it and goes on with a broken module (numpy's
    'cannot load module more than once' a step later)."""
    if threading.current_thread() is not threading.main_thread():
        import timm  # noqa: F401 (torch with it)
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        import timm  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if pressed:
        raise KeyboardInterrupt


def _show_future_warnings_in_one_line(command: str) -> None:
    """FutureWarnings (a renamed zoo model, ...) as ``dynvit COMMAND: warning: ...``, without the
    source line Python's default shows; other warnings as Python shows them."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, FutureWarning):
            print(f'dynvit {command}: warning: {message}', file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    warnings.showwarning = show


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for messages that repeat the command
    with warnings.catch_warnings():  # restores Python's warning display after the command
        _show_future_warnings_in_one_line(args.command)
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    try:
        _import_heavy_libraries()
        return args.func(args)
    except KeyboardInterrupt:
        print(f'dynvit {args.command}: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # one line for the user; DYNVIT_DEBUG=1 shows the traceback
        if os.environ.get('DYNVIT_DEBUG'):
            raise
        text = str(e).strip()
        message = weights_error_message(e, args) or (text.splitlines()[0] if text else type(e).__name__)
        if not isinstance(e, (ValueError, TypeError, OSError, NotImplementedError, FloatingPointError)):
            message = f'{type(e).__name__}: {message} (DYNVIT_DEBUG=1 for the traceback)'
        print(f'dynvit {args.command}: error: {message}', file=sys.stderr)
        return EXIT_ERROR

"""``python -m dynvit`` and the ``dynvit`` command (``run``): the command line, with a Ctrl-C that
lands while it is still starting up reported in one line like any other."""
import sys

from .cli._common import EXIT_INTERRUPTED


def run() -> None:
    """Runs the command line and exits with its code."""
    try:
        from .cli import main
        code = main()
    except KeyboardInterrupt:  # main() reports its own; this is Ctrl-C while its modules load
        print('dynvit: interrupted', file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == '__main__':
    run()

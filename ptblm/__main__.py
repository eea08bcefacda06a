"""The `ptblm` command, and `python -m ptblm ...`, which is also what `torchrun -m ptblm ...` runs."""

import sys


def main() -> None:
    try:
        from ptblm.cli import main as cli_main
    except KeyboardInterrupt:  # Ctrl-C while Python imports typer: no traceback, as later on
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()

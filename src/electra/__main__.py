"""`electra` / `python -m electra`."""

import sys

from electra.cli import run
from electra.commands import COMMANDS


def main() -> None:
    sys.exit(run(COMMANDS))


if __name__ == "__main__":
    main()

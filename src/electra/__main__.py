"""`electra` / `python -m electra`."""

import sys

from electra.runtime import keep_freed_memory
from electra.cli import run
from electra.commands import COMMANDS


def main() -> None:
    keep_freed_memory()
    sys.exit(run(COMMANDS))


if __name__ == "__main__":
    main()

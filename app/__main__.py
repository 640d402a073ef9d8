"""`python -m app`: the command line (app/cli). Imports: cli."""

import sys

from app.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

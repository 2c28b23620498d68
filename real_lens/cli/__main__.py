"""``python -m real_lens.cli``: the same command line as ``python -m real_lens`` and ``real-lens``."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())

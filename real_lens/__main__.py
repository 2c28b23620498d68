"""``python -m real_lens`` and ``torchrun ... -m real_lens``: the ``real-lens`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

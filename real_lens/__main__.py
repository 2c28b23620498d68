"""``python -m real_lens`` and ``torchrun ... -m real_lens``: the ``real-lens`` command line."""

from .cli import entry

if __name__ == "__main__":
    entry()

"""real-lens: REAL (ICLR 2026) module localisation and steering on TransformerLens 4."""

__version__ = "0.1.0"

"""The package version, read once from the installed distribution's metadata (pyproject.toml is its one source)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("real-lens")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

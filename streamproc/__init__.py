"""streamproc: a priority-aware Kafka stream processor."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("streamproc")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]

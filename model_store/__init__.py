"""The contract between compression and serving: variants, their manifests, and opening them to transcribe."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hush")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

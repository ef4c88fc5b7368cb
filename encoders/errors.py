"""Errors of the video/encoder side; all are ``VStoreError`` so the CLI reports them cleanly."""
from vstore.errors import VStoreError

EXIT_SOME_FAILED = 3  # documented exit status of `build`, `download`, `predict` when some inputs failed


class VideoError(VStoreError):
    """A video file that cannot be decoded (the message says why, for failures.csv)."""


class EncoderSpecError(VStoreError):
    """An ``--encoder`` value that names no known encoder."""


class EncoderUnavailableError(VStoreError):
    """An encoder whose weights cannot be had (no network, missing file...)."""


class TextUnsupportedError(VStoreError):
    """Text queries asked of an encoder without a text tower (e.g. ``thumbnail``)."""

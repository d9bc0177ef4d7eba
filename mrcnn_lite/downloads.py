"""What the package's downloads raise when a file cannot be had.

Two things are fetched, and only when asked for: torchvision's weights (``weights="DEFAULT"``,
``torchvision_compat.py``) and the Penn-Fudan data set (``data/penn_fudan.py``). Both fail the same way, with
one ``DownloadError`` whose message is one line naming the file to place by hand and where, so that one
``except DownloadError`` (or ``except OSError``) catches either.
"""


class DownloadError(OSError):
    """A file could not be fetched; the message is one line naming the file to place and where."""

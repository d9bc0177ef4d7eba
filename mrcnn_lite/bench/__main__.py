"""``python -m mrcnn_lite.bench``: the same as ``python -m mrcnn_lite bench``."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m capxai``: the ``capxai`` command line (what the demo runs in its worker processes)."""
import sys

from capxai.cli import main

if __name__ == "__main__":
    sys.exit(main())

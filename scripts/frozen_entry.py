"""Entry point of the frozen (PyInstaller) app: the same command line as `mnistgui`."""

import sys

from mnistgui.cli import main

if __name__ == "__main__":
    sys.exit(main())

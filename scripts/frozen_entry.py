"""Entry point of the frozen (PyInstaller) app: the same command line as `mnistgui`."""

import sys

from mnistgui import shipped_cache

# Before anything imports Numba: compile for the CPU level the app's shipped graphs were built for.
shipped_cache.choose_cpu_level()

from mnistgui.cli import main  # noqa: E402  (after the CPU level)

if __name__ == "__main__":
    sys.exit(main())

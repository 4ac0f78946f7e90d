"""The ``dreamos-bridge`` console script: the engine's command line.

``pip install dreamos-bridge`` installs this as the ``dreamos-bridge``
command (``[project.scripts]`` in pyproject.toml). It runs the same code as
the standalone binary (``serve``, ``check-config``, ``hash-key``,
``token``, ``route``, ``dead-letters``, ``bench``); see
``dreamos-bridge --help``.
"""

from __future__ import annotations

import os
import signal
import sys

from dreamos_bridge import _native


def main() -> None:
    # Rust handles SIGINT while `serve` runs (drain, then exit 0). Python's
    # handler would only raise KeyboardInterrupt after the drain, and outside
    # `serve` Ctrl-C should end the command at once, as it does for the binary.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # An argument that is not UTF-8 arrives here with lone surrogates
    # (surrogateescape), which Rust strings cannot take: read its bytes
    # lossily, as the binary does (`to_string_lossy`).
    argv = [os.fsencode(a).decode("utf-8", "replace") for a in sys.argv]
    sys.exit(_native.cli_main(argv))


if __name__ == "__main__":
    main()

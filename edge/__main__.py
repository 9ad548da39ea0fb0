"""``python -m edge [settings.toml]``: run one edge agent until SIGINT or SIGTERM.

The ``vigil edge`` command is the usual way in; this module exists so an agent can run
as a bare process (tests kill it with SIGKILL to check its last will). Settings come from
the environment (``VIGIL_EDGE_*``) and the optional TOML file's ``[edge]`` table.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from edge.errors import EdgeError
from edge.runtime import run
from edge.settings import EdgeSettings
from wire import ConfigError


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = EdgeSettings.load(Path(argv[0]) if argv else None)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        run(settings, stop)
    except EdgeError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

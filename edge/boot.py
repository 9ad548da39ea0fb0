"""The agent's boot number: grows on every start, so a restart is visible on the bus.

Consumers compare ``Status.boot`` (Sparkplug's bdSeq) to tell a new session from an old
one even when they never saw the offline status in between.

Choice: the start time in epoch ms, and, when a state file is configured, at least one
more than the number stored there. Time alone needs no disk and grows across restarts as
long as the clock does; the file covers a gateway whose clock starts at 1970 or steps
back after NTP sync, where time alone would make a later boot look older. The value stays
close to a timestamp either way, so it also says roughly when the agent started.

Invariants:
- ``next_boot`` returns a value greater than any it returned before for the same file;
- the file is replaced atomically (write then rename), so a crash mid-write leaves the
  old number, never a torn one; an unreadable file is an error, not a silent reset.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import EdgeError


def next_boot(now_ms: int, state_file: Path | None = None) -> int:
    """The boot number for an agent starting at ``now_ms``; record it in ``state_file``."""
    if state_file is None:
        return now_ms
    previous = -1
    try:
        text = state_file.read_text(encoding="ascii").strip()
        previous = int(text)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise EdgeError(
            f"boot file {state_file} is unreadable ({e}); fix or delete it "
            "(deleting it falls back to the clock for the next boot number)"
        ) from None
    boot = max(now_ms, previous + 1)
    tmp = state_file.with_name(state_file.name + ".tmp")
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{boot}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state_file)
    except OSError as e:
        raise EdgeError(f"cannot write boot file {state_file}: {e}") from None
    return boot

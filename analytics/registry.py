"""The detector registry: name -> class. The engine runs every one of them, in this order,
and the first one that fired on a reading explains it: a configured rule, then a lying
sensor, then a statistical deviation, then a lasting shift of the average, then a change
of behaviour (which all the others also cause). A detector with a ``link`` method builds
on another's state and is handed the registry's instances (``shift`` on ``baseline``)."""

from __future__ import annotations

from analytics.detectors import Baseline, Detector, Noisy, Range, Spike, Stuck, Threshold
from analytics.likelihood import Surprise
from analytics.shift import Shift

DETECTORS: dict[str, type[Detector]] = {
    Threshold.name: Threshold,
    Range.name: Range,
    Stuck.name: Stuck,
    Spike.name: Spike,
    Noisy.name: Noisy,
    Baseline.name: Baseline,
    Shift.name: Shift,
    Surprise.name: Surprise,
}

__all__ = ["DETECTORS"]

"""The utility experiment: the tracker's error on held-out real frames with and without synthetic frames.

`experiment` runs the arms (resumable), `layouts` draws the key-point layouts the conditional
generator is asked for, `report` turns per-seed results into spreads, paired differences, a verdict,
a Markdown table and a plot.
"""

from medsynth.utility.experiment import UtilityConfig, run_utility

__all__ = ["UtilityConfig", "run_utility"]

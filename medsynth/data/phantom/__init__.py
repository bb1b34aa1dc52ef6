"""Procedural X-ray angiography phantom: the built-in data set (`builtin://phantom`) and the tests' data.

Real angiography cannot ship with the project, so the demo, the tests and the benchmarks use frames
drawn from a small physical model: a contrast-filled coronary tree (Murray's-law tapering, two to three
generations of bifurcations) and a catheter in front of soft anatomy, imaged as transmitted X-rays
(Beer-Lambert), with quantum noise and image-intensifier vignetting, shown MONOCHROME2 (vessels dark).

Frames come in cine loops (one tree, beating: a smooth contraction/twist/warp per cardiac phase) and
loops come in patients (one tree and one body seen from a different projection per loop), so that
splitting by patient, not by frame, can be tested. Every frame is a pure function of
`(size, seed, index)`: frame i does not depend on how many frames are asked for, and frames can be
rendered in any order or in parallel.

Modules by what they draw: `tree` (the patient's coronary tree), `loop` (one projection of it, the
catheter and the cardiac motion), `body` (the anatomy the beam crosses, vignetting), `render` (a
frame: drawing, image formation, noise, its key points), `writer` (PNG or DICOM files, COCO key
points); `seeds` keeps every random decision on a stream of its own.
"""

from medsynth.data.phantom.render import (
    FRAMES_PER_LOOP,
    LOOPS_PER_PATIENT,
    PhantomFrame,
    patient_name,
    phantom_array,
    phantom_frames,
    render_frame,
)
from medsynth.data.phantom.writer import FORMATS, FRAME_TIME_MS, write_phantom

__all__ = [
    "FORMATS",
    "FRAMES_PER_LOOP",
    "FRAME_TIME_MS",
    "LOOPS_PER_PATIENT",
    "PhantomFrame",
    "patient_name",
    "phantom_array",
    "phantom_frames",
    "render_frame",
    "write_phantom",
]

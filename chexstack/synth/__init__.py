"""Synthetic chest radiographs with visible findings, for tests, demos and smoke training runs.

Three modules with one job each:

- `draw`: the pixels (`render_radiograph`), anatomy and findings drawn with numpy;
- `encode`: the files (`make_png`, `make_jpeg`, `make_dicom` with fake PHI);
- `dataset`: a data set in the ChestX-ray14 layout (`synthesize`), which the training code reads
  unchanged.

Nothing here is real patient data. The names below are the package's interface.
"""

from chexstack.synth.dataset import (
    DATA_ENTRY_CSV,
    DATA_ENTRY_HEADER,
    DICOM_LABELS_CSV,
    DICOM_LABELS_HEADER,
    SynthSummary,
    draw_findings,
    labels_field,
    synthesize,
)
from chexstack.synth.draw import render_radiograph
from chexstack.synth.encode import PIXEL_SPACING_MM, SYNTH_UID_PREFIX, make_dicom, make_jpeg, make_png

__all__ = [
    "DATA_ENTRY_CSV",
    "DATA_ENTRY_HEADER",
    "DICOM_LABELS_CSV",
    "DICOM_LABELS_HEADER",
    "PIXEL_SPACING_MM",
    "SYNTH_UID_PREFIX",
    "SynthSummary",
    "draw_findings",
    "labels_field",
    "make_dicom",
    "make_jpeg",
    "make_png",
    "render_radiograph",
    "synthesize",
]

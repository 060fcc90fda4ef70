"""The 14 ChestX-ray14 findings in the canonical order every model output and message uses."""

from typing import Final

LABELS: Final[tuple[str, ...]] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_LABELS: Final[int] = len(LABELS)
NO_FINDING: Final[str] = "No Finding"

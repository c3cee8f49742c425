"""Plain decisions behind the sensors: retrain or not, and why.

The Dagster sensors (didact_assets/sensors.py) gather facts from the instance and the
review queue and call these; the decisions are tested on their own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str
    partitions: tuple[str, ...] = ()


def new_data_decision(raw_partitions: dict[str, int], model_partitions: dict[str, int]) -> Decision:
    """Retrain each day whose raw data landed after its model was last trained.

    Both maps are partition → storage id (event order) of the latest materialisation.
    A day the nightly job already trained (model newer than raw) needs nothing.
    """
    todo = tuple(
        sorted(p for p, raw_id in raw_partitions.items() if model_partitions.get(p, -1) < raw_id)
    )
    if not todo:
        return Decision(False, "every raw partition is already trained on")
    return Decision(True, f"new raw data for {', '.join(todo)}", todo)


def drift_decision(ood_rate: float, samples: int, threshold: float, min_samples: int) -> Decision:
    """Retrain when the live OOD rate is above ``threshold`` over enough samples."""
    if samples < min_samples:
        return Decision(False, f"only {samples} samples scored in the window (need {min_samples})")
    if ood_rate <= threshold:
        return Decision(False, f"OOD rate {ood_rate:.2%} ≤ threshold {threshold:.2%}")
    return Decision(True, f"OOD rate {ood_rate:.2%} > threshold {threshold:.2%} over {samples} samples")

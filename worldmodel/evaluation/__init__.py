"""Evaluation and hierarchy analysis of a trained DLH (paper §4.1, §4.3-4.4, App. C.3).

- `protocol`: best-of-K open-loop SSIM/PSNR curves (`evaluate`).
- `analysis`: levels used (Table 2), per-level KL (Table 5), the change prior by inferred
  component (Table 3), per-level sampling (Fig. 5a, 10, 11), change maps (Fig. 5c).
- `tracking`: best-of-K open-loop tracking of the objects a source can read off its frames
  (centroid error in pixels, colour kept; `tracking_scores`).
- `probes`: linear probes from each level's posterior mean to the objects (`level_probes`).
- `loading`: resolving `--checkpoint` and the run's data config.
- `cli`: the `dlh eval`, `dlh rollout` and `dlh analyze` commands.
"""

from .analysis import (
    change_detection,
    change_map_figure,
    change_prior_by_component,
    hierarchy_report,
    level_samples,
    levels_used,
    per_level_kl,
    resample_levels,
    sequence_measures,
    summarize,
    top_down_from,
)
from .probes import level_probes
from .protocol import EvalResult, best_of_k_curves, evaluate, ssim_name
from .tracking import tracking_scores

__all__ = [
    "EvalResult", "evaluate", "best_of_k_curves", "ssim_name",
    "levels_used", "per_level_kl", "sequence_measures", "summarize", "change_prior_by_component",
    "change_detection", "top_down_from", "resample_levels", "level_samples", "change_map_figure",
    "hierarchy_report", "tracking_scores", "level_probes",
]

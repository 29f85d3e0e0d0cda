"""Reading TensorBoard event files back in tests, with the tensorboard package's own reader."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple, Union


def read_scalars(logdir: Union[str, Path]) -> Dict[str, List[Tuple[int, float, float]]]:
    """Every scalar tag of a log directory as (step, value, wall_time), as TensorBoard shows them.

    EventAccumulator reads the directory's event files in name (= creation time) order and applies
    their purge_step markers, so points a resumed run superseded are not returned.
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={SCALARS: 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)] for tag in acc.Tags()[SCALARS]}


def steps(points: List[Tuple[int, float, float]]) -> List[int]:
    """The step numbers of a tag's points, in the order they are shown."""
    return [p[0] for p in points]

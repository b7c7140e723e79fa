"""Scalars read back from a model_dir's TensorBoard event files.

Uses TensorBoard's own ``EventAccumulator``, so what the report draws is what
TensorBoard would show: the same tags, and the same handling of a restarted
job (events "orphaned" by a restart from an older checkpoint are dropped).
Both TF1 scalar summaries and TF2 scalar tensors are read.

Deliberately left out: histograms, images and any tag that is not a scalar.
"""
import dataclasses
import glob
import os

import bwtf

_EVENT_GLOB = "events.out.tfevents.*"


class NoEventsError(bwtf.UserError, FileNotFoundError):
    """The model_dir holds no TensorBoard event files."""


@dataclasses.dataclass(frozen=True)
class Series:
    """One scalar tag of one run directory, in step order."""
    run: str  # the run directory relative to model_dir ("." for training)
    tag: str
    wall_times: tuple
    steps: tuple
    values: tuple


def run_dirs(model_dir):
    """Every directory under ``model_dir`` holding event files, model_dir first."""
    found = set()
    for path in glob.glob(os.path.join(model_dir, "**", _EVENT_GLOB), recursive=True):
        found.add(os.path.dirname(path))
    if not found:
        raise NoEventsError(
            f"{model_dir} holds no TensorBoard event files ({_EVENT_GLOB}); expected the "
            "model_dir of a bwtf-train run (the chief writes them there) or of bwtf-eval.")
    root = os.path.normpath(model_dir)
    return sorted(found, key=lambda d: (os.path.normpath(d) != root, d))


def _accumulator(run_dir):
    # Imported here: tensorboard is heavy and only this module needs it.
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        run_dir,
        size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return accumulator


def _scalar_tensor_events(accumulator, tag):
    from tensorboard.util import tensor_util

    points = []
    for event in accumulator.Tensors(tag):
        value = tensor_util.make_ndarray(event.tensor_proto)
        if value.size != 1 or value.dtype.kind not in "fiu":
            return None  # not a scalar summary (text, images, histograms)
        points.append((event.wall_time, event.step, float(value.reshape(()))))
    return points


def read_scalars(model_dir, run_dir):
    """{tag: Series} for every scalar tag in ``run_dir``."""
    accumulator = _accumulator(run_dir)
    tags = accumulator.Tags()
    raw = {tag: [(e.wall_time, e.step, e.value) for e in accumulator.Scalars(tag)]
           for tag in tags.get("scalars", [])}
    for tag in tags.get("tensors", []):
        points = _scalar_tensor_events(accumulator, tag)
        if points:
            raw.setdefault(tag, points)
    run = os.path.relpath(run_dir, model_dir)
    series = {}
    for tag, points in raw.items():
        points.sort(key=lambda point: (point[1], point[0]))
        wall_times, steps, values = zip(*points)
        series[tag] = Series(run, tag, wall_times, steps, values)
    return series


def read_all(model_dir):
    """{run: {tag: Series}} for every run directory under ``model_dir``."""
    return {os.path.relpath(d, model_dir): read_scalars(model_dir, d)
            for d in run_dirs(model_dir)}

"""PNG plots of a training run, drawn from its event files (what ``bwtf-report`` writes).

    write_report(model_dir, output_dir=None) -> [paths]

writes into ``output_dir`` (default ``MODEL_DIR/report``):

  loss.png            training loss against step (and eval loss per split)
  precision_at_1.png  precision@1 against step, one line per eval split
                      (the training-batch precision too, when it was logged)
  throughput.png      images/s against wall-clock time since the run started

The scalars come from TensorBoard's own event reader (see ``evaluation.events``),
so the plots agree with TensorBoard. A plot whose scalars are missing is left
out with a warning naming the tags it looked for; having no plot at all is an
error. Each file is written to a temporary name and renamed, so a reader never
sees a half-written PNG.

Deliberately left out: the command line (``bwtf.estimator.report``), interactive
plots and anything TensorBoard already does better (histograms, graphs, smoothing).
"""
import io
import os

from absl import logging

import bwtf
from bwtf.estimator.evaluation import events as _eval_events

# Throughput tag names, most specific first; train.py's own tag leads.
THROUGHPUT_TAGS = ("images_per_sec", "images/sec", "examples_per_sec", "examples/sec")
_STEPS_PER_SEC_TAG = "global_step/sec"


class ReportError(bwtf.UserError, ValueError):
    """The model_dir cannot be turned into a report."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportError("bwtf-report draws with matplotlib, which is not installed; "
                          "pip install 'bwtf[report]' (or matplotlib)") from None

    matplotlib.use("Agg")  # no display on a login or compute node
    from matplotlib import pyplot

    return pyplot


def _label(series):
    where = "train" if series.run == "." else series.run
    return f"{where}: {series.tag}"


def _matching(runs, predicate):
    return [series for tags in runs.values() for tag, series in sorted(tags.items())
            if predicate(series.run, tag)]


def loss_series(runs):
    return _matching(runs, lambda run, tag: tag == "loss")


def precision_series(runs):
    return _matching(runs, lambda run, tag: tag.endswith("precision_at_1"))


def throughput_series(runs):
    """Images/s series; falls back to steps/s when no images/s tag was logged."""
    for tag_name in THROUGHPUT_TAGS:
        found = _matching(runs, lambda run, tag, want=tag_name: tag.endswith(want))
        if found:
            return found, "images/s"
    return _matching(runs, lambda run, tag: tag == _STEPS_PER_SEC_TAG), "steps/s"


def _save(figure, path, root):
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    bwtf.write_atomically(path, png.getvalue(), root=root)


def _plot(path, root, title, series_list, x_label, y_label, x_of):
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 4.2))
    for series in series_list:
        marker = "o" if len(series.steps) < 30 else None
        axes.plot(x_of(series), series.values, marker=marker, label=_label(series))
    axes.set_title(title)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    try:
        _save(figure, path, root)
    finally:
        pyplot.close(figure)
    return path


def _time_axis(series_list):
    """(label, x_of) with the unit that suits the run's length: s, min or h."""
    start = min(min(series.wall_times) for series in series_list)
    span = max(max(series.wall_times) for series in series_list) - start
    unit, seconds = ("s", 1.0) if span < 120 else ("min", 60.0) if span < 7200 else ("h", 3600.0)
    return (f"wall-clock time since start ({unit})",
            lambda series: [(wall - start) / seconds for wall in series.wall_times])


def write_report(model_dir, output_dir=None):
    """Draws the plots; returns the paths written. Raises ReportError/NoEventsError."""
    runs = _eval_events.read_all(model_dir)
    # The default folder is inside the run folder, so a link planted there is refused;
    # a folder the user names is theirs (links and all).
    root = output_dir or model_dir
    output_dir = output_dir or os.path.join(model_dir, "report")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ReportError(f"--output_dir {output_dir} exists and is not a directory; "
                          "choose a directory for the PNG files")
    by_step = lambda series: series.steps  # noqa: E731
    throughput, unit = throughput_series(runs)
    plots = [
        ("loss.png", "Loss", loss_series(runs), "global step", "loss", by_step, "'loss'"),
        ("precision_at_1.png", "Precision@1", precision_series(runs), "global step",
         "precision@1", by_step, "'*precision_at_1'"),
    ]
    if throughput:
        time_label, by_time = _time_axis(throughput)
        plots.append(("throughput.png", "Throughput", throughput, time_label, unit, by_time, None))
    else:
        logging.warning("no throughput plot: no scalar tag named %s or %r in %s",
                        ", ".join(THROUGHPUT_TAGS), _STEPS_PER_SEC_TAG, model_dir)
    written = []
    for name, title, series_list, x_label, y_label, x_of, wanted in plots:
        if not series_list:
            logging.warning("no %s plot: no scalar tag %s in %s", title, wanted, model_dir)
            continue
        written.append(_plot(os.path.join(output_dir, name), root, title, series_list,
                             x_label, y_label, x_of))
    if not written:
        raise ReportError(
            f"{model_dir} has event files but none of the scalars the report draws "
            "(loss, precision_at_1, images/s); expected the model_dir of a bwtf-train run.")
    return written

"""Draws PNG plots of a training run from its event files.

    bwtf-report /lustre/me/runs/resnet50 [--output_dir=DIR]

writes into DIR (default MODEL_DIR/report) loss.png (training loss against step,
and eval loss per split), precision_at_1.png (one line per eval split, and the
training-batch precision when it was logged) and throughput.png (images/s
against wall-clock time). The scalars come from TensorBoard's own event reader,
so the plots agree with TensorBoard; a plot whose scalars are missing is left
out with a warning naming the tags it looked for. Each file is written whole or
not at all, with the user's umask.

For everything else (histograms, graphs, smoothing) use TensorBoard, which is
installed with bwtf: tensorboard --logdir MODEL_DIR.

Exit codes:
  0   done (the paths written are printed)
  2   no such model_dir, or no scalars to plot in it (one line)
"""
import os

from absl import flags

from bwtf import program
from bwtf.estimator.evaluation import plots


def define_flags(flag_values=flags.FLAGS):
    """Defines --output_dir (at program start, not import); returns its FlagHolder."""
    return flags.DEFINE_string(
        "output_dir", None, "Where the PNG files go; default MODEL_DIR/report.",
        flag_values=flag_values)


def main(args, output_dir_flag):
    model_dir = args[0]
    if not os.path.isdir(model_dir):
        raise plots.ReportError(f"model_dir {model_dir} does not exist or is not a directory; expected the "
                          "--model_dir of a bwtf-train run")
    for path in plots.write_report(model_dir, output_dir_flag.value):
        print(path)
    return 0


def run():
    output_dir_flag = define_flags()
    program.run(lambda args: main(args, output_dir_flag), program.Program(
        name="bwtf-report", doc=__doc__, usage="bwtf-report MODEL_DIR [--output_dir=DIR]",
        flag_groups=(("Report", [output_dir_flag]),), args=(1, 1), args_name="MODEL_DIR"))


if __name__ == "__main__":
    run()

"""What a user sees after a run: the event files TensorBoard reads, and bwtf-report's PNGs."""
import os
import pathlib
import re

import pytest
import tensorflow as tf
from eval_helpers import TRAIN_STEPS, run_module
from tensorboard.backend.event_processing import event_accumulator

import bwtf

pytestmark = pytest.mark.timeout(300)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_REPORT_FILES = ("loss.png", "precision_at_1.png", "throughput.png")


def _scalars(run_dir):
    accumulator = event_accumulator.EventAccumulator(
        run_dir, size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}


def test_the_chiefs_event_files_hold_loss_lr_precision_and_throughput(trained_run):
    scalars = _scalars(trained_run.model_dir)
    for wanted in ("loss", "learning_rate", "train_precision_at_1", "throughput/images_per_sec"):
        assert wanted in scalars, sorted(scalars)
    for tag in ("loss", "learning_rate", "train_precision_at_1", "throughput/images_per_sec"):
        steps = [event.step for event in scalars[tag]]
        assert len(steps) >= 3 and steps == sorted(steps) and steps[-1] <= TRAIN_STEPS, (tag, steps)
    assert all(event.value > 0 for event in scalars["throughput/images_per_sec"])
    assert all(0 <= event.value <= 1 for event in scalars["train_precision_at_1"])


def _check_png(path):
    data = path.read_bytes()
    assert data.startswith(_PNG_SIGNATURE), path
    image = tf.io.decode_png(data)
    height, width, _ = image.shape
    assert height >= 200 and width >= 300, (path, image.shape)
    # A drawn plot, not a blank canvas: many distinct colours.
    assert len(tf.unique(tf.reshape(image[..., 0], [-1]))[0]) > 10


def test_the_report_draws_readable_pngs_from_a_real_run(trained_run, copy_run):
    model_dir = copy_run()
    # Evaluated precision shows up in the plot's eval lines.
    assert run_module("bwtf.estimator.evaluate", *trained_run.model_flags,
                      f"--model_dir={model_dir}").returncode == 0
    result = run_module("bwtf.estimator.report", model_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    report_dir = os.path.join(model_dir, "report")
    assert result.stdout.split() == [os.path.join(report_dir, name) for name in _REPORT_FILES]
    for name in _REPORT_FILES:
        _check_png(pathlib.Path(report_dir, name))
    assert not [name for name in os.listdir(report_dir) if name.startswith(".tmp-")]


def test_the_report_series_come_from_every_run_directory(trained_run, copy_run, tmp_path):
    from bwtf.estimator.evaluation import events as _eval_events
    from bwtf.estimator.evaluation import plots as report

    model_dir = copy_run()
    runs = _eval_events.read_all(model_dir)
    assert "." in runs
    precision_runs = {series.run for series in report.precision_series(runs)}
    assert "." in precision_runs  # train_precision_at_1
    throughput, unit = report.throughput_series(runs)
    assert unit == "images/s" and [s.tag for s in throughput] == ["throughput/images_per_sec"]
    written = report.write_report(model_dir, str(tmp_path / "elsewhere"))
    assert sorted(os.path.basename(path) for path in written) == sorted(_REPORT_FILES)


@pytest.mark.parametrize("case", ["no_events", "missing_dir", "no_scalars", "two_dirs",
                                  "output_dir_is_a_file"])
def test_the_report_refuses_what_it_cannot_draw(tmp_path, case):
    model_dir = tmp_path / "run"
    args = [str(model_dir)]
    if case == "no_events":
        model_dir.mkdir()
        expected = "holds no TensorBoard event files"
    elif case == "missing_dir":
        expected = "does not exist"
    elif case == "no_scalars":
        writer = tf.summary.create_file_writer(str(model_dir))
        with writer.as_default():
            tf.summary.text("notes", "no scalars here", step=0)
        writer.close()
        expected = "none of the scalars the report draws"
    elif case == "two_dirs":
        model_dir.mkdir()
        args.append(str(tmp_path))
        expected = "expected exactly one MODEL_DIR"
    else:
        writer = tf.summary.create_file_writer(str(model_dir))
        with writer.as_default():
            tf.summary.scalar("loss", 1.0, step=0)
        writer.close()
        (tmp_path / "taken").write_text("")
        args.append(f"--output_dir={tmp_path / 'taken'}")
        expected = "exists and is not a directory"
    result = run_module("bwtf.estimator.report", *args, timeout=120)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (model_dir / "report").exists() or not any((model_dir / "report").iterdir())


def test_the_training_log_says_what_runs_how_fast_and_how_it_ended(trained_run):
    log = trained_run.train_log
    start = [line for line in log.splitlines() if re.search(r"task chief:0 .* global", line)]
    assert len(start) == 1, "the task's role, data, model and global batch, logged once"
    assert "small_cnn" in start[0] and trained_run.dataset in start[0] and "32 global" in start[0]
    progress = re.findall(r"step (\d+)/60 loss [\d.]+ lr [\d.]+ .*images/s job.* ETA \d+:\d\d:\d\d", log)
    assert len(progress) >= 5, "a progress line every --log_every_steps"
    # One process, --log_every_steps=10: the line after the 10th step says step 10.
    assert [int(step) for step in progress] == list(range(10, 10 * len(progress) + 1, 10)), progress
    summary = re.findall(r"done: 60 steps .* in [\d.]+ s, [\d.]+ images/s mean, final precision@1 "
                         r"[\d.]+, newest checkpoint \S+ckpt-60", log)
    assert len(summary) == 1


def test_each_checkpoint_commit_is_logged_with_its_size_and_duration(trained_run):
    commits = [line for line in trained_run.train_log.splitlines() if "Saved checkpoint" in line]
    assert len(commits) == 3
    for line in commits:
        assert re.search(r"\d+(\.\d+)? ?(B|KiB|MiB|GiB|bytes)", line), line
        assert re.search(r"\d+(\.\d+)? ?(s|ms)\b", line), line


def _run_with_a_loss_curve(model_dir):
    writer = tf.summary.create_file_writer(str(model_dir))
    with writer.as_default():
        for step in range(5):
            tf.summary.scalar("loss", 2.0 - 0.1 * step, step=step)
    writer.close()


@pytest.mark.parametrize("plant", ["report_folder", "png_file"])
def test_a_link_planted_in_the_run_folder_never_leads_the_report_outside(tmp_path, plant):
    from bwtf.estimator.evaluation import plots
    victim, elsewhere, model_dir = tmp_path / "victim.png", tmp_path / "elsewhere", tmp_path / "run"
    victim.write_bytes(b"keep me")
    elsewhere.mkdir()
    _run_with_a_loss_curve(model_dir)
    if plant == "report_folder":
        (model_dir / "report").symlink_to(elsewhere)
        with pytest.raises(bwtf.LinkRefusedError, match="symbolic link"):
            plots.write_report(str(model_dir))
    else:
        (model_dir / "report").mkdir()
        (model_dir / "report" / "loss.png").symlink_to(victim)
        assert [os.path.basename(p) for p in plots.write_report(str(model_dir))] == ["loss.png"]
        assert not (model_dir / "report" / "loss.png").is_symlink()
        _check_png(model_dir / "report" / "loss.png")
    assert victim.read_bytes() == b"keep me" and list(elsewhere.iterdir()) == []


def test_eval_json_replaces_a_planted_link_and_keeps_its_target(tmp_path):
    from bwtf.estimator import evaluate
    victim = tmp_path / "victim.json"
    victim.write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "eval.json").symlink_to(victim)
    evaluate._write_json(str(tmp_path / "run" / "eval.json"), {"precision_at_1": 0.5})
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "run" / "eval.json").is_symlink()
    assert '"precision_at_1": 0.5' in (tmp_path / "run" / "eval.json").read_text()

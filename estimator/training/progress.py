"""The training log line and the throughput scalars, at a steady cadence.

Every ``log_every_steps`` local steps each task logs one line: global step,
loss, learning rate, images/s of this worker and of the whole job, global
steps/s and the ETA to ``train_steps``. The chief also writes the throughput
to TensorBoard. Between log steps the hook fetches nothing, so it adds no work
to a training step.
"""
import time

import tensorflow as tf
from absl import logging

import bwtf


class ProgressHook(tf.compat.v1.train.SessionRunHook):
    """Logs progress; ``summary_dir`` None means "do not write summaries"."""

    def __init__(self, loss, learning_rate, precision_at_1, config, summary_dir=None):
        self._fetches = {"loss": loss, "lr": learning_rate, "precision_at_1": precision_at_1}
        self._config = config
        self._summary_dir = summary_dir
        # Every task's progress stays on the console (a stalled worker shows); its
        # end-of-run tally is the chief's business there (the one that writes summaries).
        self._console = None if summary_dir else bwtf.FILE_ONLY
        # An async worker's step moves the global step by one with its own batch;
        # synchronous and collective steps consume every worker's batch at once
        # (the same accounting as the learning rate's, see config).
        self._images_per_global_step = config.update_batch_size
        self._local_steps = 0
        self._start = None
        self._last = None

    def begin(self):
        self._global_step = tf.compat.v1.train.get_global_step()

    def after_create_session(self, session, coord):
        self._start = time.monotonic()
        self._last = (self._start, 0, int(session.run(self._global_step)))
        self._first_global_step = self._last[2]

    def before_run(self, run_context):
        self._local_steps += 1
        if self._local_steps % self._config.log_every_steps == 0:
            return tf.compat.v1.train.SessionRunArgs(self._fetches)
        return None

    def after_run(self, run_context, run_values):
        if run_values.results:
            # Read after the step: fetched with the train op, the global step
            # is the value before this step's increment (one behind).
            global_step = int(run_context.session.run(self._global_step))
            self._report(run_values.results, global_step)

    def _report(self, values, global_step):
        now = time.monotonic()
        last_time, last_local, last_global = self._last
        elapsed = max(now - last_time, 1e-9)
        steps_per_sec = (global_step - last_global) / elapsed
        worker_images = (self._local_steps - last_local) * self._config.batch_size / elapsed
        job_images = steps_per_sec * self._images_per_global_step
        remaining = max(self._config.train_steps - global_step, 0)
        eta = remaining / steps_per_sec if steps_per_sec > 0 else float("inf")
        logging.info(
            "step %d/%d loss %.4f lr %.5f precision@1(train) %.3f | %.1f images/s this worker, "
            "%.1f images/s job, %.2f steps/s, ETA %s",
            global_step, self._config.train_steps, values["loss"], values["lr"],
            values["precision_at_1"], worker_images, job_images, steps_per_sec, _duration(eta))
        self._write_summaries(global_step, worker_images, job_images, steps_per_sec)
        self._last = (now, self._local_steps, global_step)

    def _write_summaries(self, global_step, worker_images, job_images, steps_per_sec):
        if not self._summary_dir:
            return
        writer = tf.compat.v1.summary.FileWriterCache.get(self._summary_dir)
        summary = tf.compat.v1.Summary(value=[
            tf.compat.v1.Summary.Value(tag="throughput/images_per_sec", simple_value=job_images),
            tf.compat.v1.Summary.Value(tag="throughput/images_per_sec_per_worker", simple_value=worker_images),
            tf.compat.v1.Summary.Value(tag="throughput/global_steps_per_sec", simple_value=steps_per_sec),
        ])
        writer.add_summary(summary, global_step)

    def end(self, session):
        if self._start is None:
            return
        wall = time.monotonic() - self._start
        images = self._local_steps * self._config.batch_size
        logging.info("this task trained %d steps in %s: %.1f images/s mean for this worker",
                     self._local_steps, _duration(wall), images / max(wall, 1e-9), extra=self._console)


def _duration(seconds):
    if seconds == float("inf"):
        return "unknown"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

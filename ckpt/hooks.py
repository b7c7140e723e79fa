"""SessionRunHooks for the chief: periodic gathered saves and walltime-safe stops.

``chief_hooks`` returns one hook that
  * saves every ``policy.save_steps`` steps / ``policy.save_secs`` seconds:
    training waits for the one-step snapshot, the commit runs in the
    background (GatheredSaver.save_async), and a background failure
    (FencedError included) is raised at the next step;
  * on any of ``policy.stop_signals``, or once the remaining walltime drops
    below ``policy.walltime_margin_secs``, saves at the current step and asks
    the session to stop; ``walltime.stop_requested()`` (``ckpt.stop_requested()``)
    then tells the program why, and
    it exits with EXIT_REQUEUE;
  * saves once more in ``end()`` unless that step is already saved; the stop
    and end saves are synchronous and durable before the hook returns.
The signal handler only records the signal: saving from inside a handler
could interrupt a session.run, so the save happens after the current step.

It leaves out stopping the other tasks of the cluster; the launcher and the
ps lifecycle handle that once the chief has exited.
"""
from absl import logging as log
import tensorflow as tf

from bwtf.ckpt import commit
from bwtf.ckpt import walltime



class GatheredCheckpointHook(tf.compat.v1.train.SessionRunHook):
    """Saves through the scaffold's GatheredSaver; stops for signals/walltime."""

    def __init__(self, model_dir, scaffold, policy, environ=None):
        self._model_dir = model_dir
        self._scaffold = scaffold
        self._policy = policy
        self._stop = walltime.StopConditions(policy.stop_signals, policy.walltime_margin_secs, environ)
        self._timer = None
        if policy.save_steps or policy.save_secs:
            self._timer = tf.compat.v1.train.SecondOrStepTimer(
                every_secs=policy.save_secs, every_steps=policy.save_steps)
        self._last_saved_step = None

    def begin(self):
        walltime.record_stop(None)
        self._global_step = tf.compat.v1.train.get_global_step()
        if self._global_step is None:
            raise RuntimeError("The gathered checkpoint hook needs a global step; "
                               "create it with tf.compat.v1.train.get_or_create_global_step()")
        self._stop.install()

    def after_create_session(self, session, coord):
        del coord
        step = int(session.run(self._global_step))
        # The step just restored is already on disk (a cached verification).
        latest = commit.latest_intact_checkpoint(self._model_dir)
        self._last_saved_step = step if latest is not None and latest.step == step else None
        if self._timer is not None:
            self._timer.update_last_triggered_step(step)

    def before_run(self, run_context):
        return tf.compat.v1.train.SessionRunArgs(self._global_step)

    def after_run(self, run_context, run_values):
        self._scaffold.saver.poll()  # a background save that failed (or was fenced) stops here
        reason = self._stop.reason()
        if reason is not None:
            step = self._save(run_context.session)
            log.warning("Stopping at step %d after a final save: %s.", step, reason)
            walltime.record_stop(reason)
            run_context.request_stop()
            return
        if self._timer is None or not self._timer.should_trigger_for_step(run_values.results + 1):
            return
        step = int(run_context.session.run(self._global_step))
        if self._timer.should_trigger_for_step(step):
            self._timer.update_last_triggered_step(step)
            self._save(run_context.session, in_background=True)

    def end(self, session):
        try:
            self._save(session)
        finally:
            self._stop.uninstall()

    def _save(self, session, in_background=False):
        """Saves unless this step is saved; periodic saves commit in the
        background, the final one (stop, end) synchronously and durably.
        Returns the step saved (the snapshot's global step)."""
        step = int(session.run(self._global_step))
        if step == self._last_saved_step:
            self._scaffold.saver.wait()
            return step
        saver = self._scaffold.saver
        if in_background and hasattr(saver, "save_async"):
            step = saver.save_async(session)
        else:
            path = saver.save(session, None)
            step = commit.step_of(str(path).rsplit("/", 2)[-2]) or step
        self._last_saved_step = step
        return step


def chief_hooks(model_dir, scaffold, policy, environ=None):
    """The chief's checkpoint hooks; pass them as training_chief_hooks.

    Making them writes nothing (model_fn runs on every task); the chief takes
    ownership and repairs the pointers with ``prepare_model_dir`` before
    training.
    """
    return [GatheredCheckpointHook(model_dir, scaffold, policy, environ=environ)]

"""The learning-rate schedule as a graph tensor (see ``config`` for the rule).

Kept apart from ``model_fn`` so the schedule can be tested on its own numbers.
"""
import math

import tensorflow as tf


def learning_rate(global_step, train_config):
    """Warmup to ``train_config.peak_lr``, then cosine/step/constant decay.

    The ops live under ``lr_schedule/`` so that no op is named
    ``learning_rate``: the summary of that name would otherwise be uniquified
    to the TensorBoard tag ``learning_rate_1``.
    """
    with tf.name_scope("lr_schedule"):
        return _scheduled(global_step, train_config)


def _scheduled(global_step, train_config):
    optimizer = train_config.optimizer
    peak = train_config.peak_lr
    step = tf.cast(global_step, tf.float32)
    warmup = optimizer.warmup_steps
    if optimizer.decay == "cosine":
        span = float(max(1, train_config.train_steps - warmup))
        progress = tf.clip_by_value((step - warmup) / span, 0.0, 1.0)
        decayed = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif optimizer.decay == "step":
        # Rounded: 80/90 of 9000 steps is 8000, even when the float product is 7999.999.
        # As in the reference (piecewise_constant), a boundary step keeps the old value.
        boundaries = [int(round(b * train_config.train_steps)) for b in optimizer.decay_boundaries]
        values = [peak * optimizer.decay_factor ** i for i in range(len(boundaries) + 1)]
        decayed = tf.compat.v1.train.piecewise_constant(
            tf.cast(global_step, tf.int64), [tf.cast(b, tf.int64) for b in boundaries], values)
    else:
        decayed = tf.constant(peak, tf.float32)
    if warmup:
        decayed = tf.where(step < warmup, peak * step / warmup, decayed)
    return decayed

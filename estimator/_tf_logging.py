"""One log stream for bwtf's programs: TensorFlow's records go through absl's handler.

TF's Python logger has a handler of its own *and* propagates to absl's, so
under ``absl.app.run`` every TF record is printed twice, in two formats. TF
1.x-era APIs that the Estimator stack still calls (``tf.compat.v1.layers``,
``SessionRunHook`` and friends) also print a deprecation notice for each
use, which buries the lines a user watches (role, progress, checkpoint
commits, summary). Both are fixed here, once, at program start.

Deliberately left out: the C++ runtime's own messages (``TF_CPP_MIN_LOG_LEVEL``
governs those, and users expect to set it themselves) and any change of
level: ``--verbosity`` still decides what is shown.
"""
import tensorflow as tf
from tensorflow.python.util import deprecation


def route_tensorflow_logs_through_absl():
    logger = tf.get_logger()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    # TF 2.15 (pinned) has no public switch for these notices; this module
    # flag is what its own `deprecation.silence()` toggles.
    deprecation._PRINT_DEPRECATION_WARNINGS = False  # pylint: disable=protected-access

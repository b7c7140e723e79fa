"""The runner's SavedModel export: a model_fn's PREDICT graph and export_outputs, one checkpoint's values.

The graph is built from ``serving_input_receiver_fn`` (features and the
receiver placeholders), the checkpoint restored through the spec's scaffold
saver (bwtf's verified restore) or, without one, a plain Saver, and written
with ``tf.compat.v1.saved_model.Builder`` into a temporary sibling directory
that is renamed to ``<export_dir_base>/<unix seconds>`` once complete, so
the directory a reader sees is never half written. The serving tag is
"serve"; each ``export_outputs`` key becomes a signature over the receiver
tensors; local variables and tables are initialised on load.

Deliberately left out: training and eval graphs in the same SavedModel
(Estimator's experimental mode), and extra assets.
"""
import os
import time

import tensorflow as tf

from bwtf.estimator.runner import spec


def _receiver_tensors(receiver):
    tensors = receiver.receiver_tensors
    return tensors if isinstance(tensors, dict) else {"input": tensors}


def _signature_defs(model_spec, receiver_tensors):
    if not model_spec.export_outputs:
        raise ValueError("model_fn's PREDICT EstimatorSpec has no export_outputs; nothing to export")
    return {key: output.as_signature_def(receiver_tensors) for key, output in model_spec.export_outputs.items()}


def _free_version_dir(export_dir_base):
    stamp = int(time.time())
    while tf.io.gfile.exists(os.path.join(export_dir_base, str(stamp))):
        stamp += 1
    return os.path.join(export_dir_base, str(stamp))


def export_saved_model(call_model_fn, export_dir_base, serving_input_receiver_fn, checkpoint_path):
    """Builds, restores and writes the SavedModel; returns the final directory."""
    with tf.Graph().as_default():
        tf.compat.v1.train.get_or_create_global_step()
        receiver = serving_input_receiver_fn()
        model_spec = call_model_fn(receiver.features, None, spec.ModeKeys.PREDICT)
        signatures = _signature_defs(model_spec, _receiver_tensors(receiver))
        saver = model_spec.scaffold.saver or tf.compat.v1.train.Saver(sharded=True)
        init_on_load = tf.group(tf.compat.v1.local_variables_initializer(), tf.compat.v1.tables_initializer())
        tf.io.gfile.makedirs(export_dir_base)
        final_dir = _free_version_dir(export_dir_base)
        staging_dir = os.path.join(export_dir_base, f".tmp-{os.path.basename(final_dir)}-{os.getpid()}")
        with tf.compat.v1.Session() as session:
            saver.restore(session, checkpoint_path)
            builder = tf.compat.v1.saved_model.Builder(staging_dir)
            builder.add_meta_graph_and_variables(
                session, [tf.saved_model.SERVING], signature_def_map=signatures, main_op=init_on_load,
                clear_devices=True, strip_default_attrs=True)
            builder.save()
    tf.io.gfile.rename(staging_dir, final_dir)
    return final_dir

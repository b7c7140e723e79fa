"""Writes or restores a model checkpoint with a plain tf.compat.v1 Saver, in whichever TensorFlow runs it.

The cross-version tests run it under TensorFlow 2.15 and 2.21: ``save`` builds
each model (inference graph), sets every variable (moving statistics included)
to seeded random values, writes ``<dir>/<model>/model.ckpt`` and the logits of a
seeded input batch; ``restore`` builds the same model in the other version,
restores that checkpoint and writes its logits of the same batch. Both then
build the training graph too, restore the checkpoint into it, run one batch
and its batch-norm updates, and write the training logits and the moving
statistics after that update.

    python tests/estimator/checkpoint_roundtrip.py save|restore <dir> <model>:<size>:<classes> ...
"""
import json
import pathlib
import sys

import numpy as np
import tensorflow as tf

from bwtf.estimator import config, model_fn


def _images(size):
    return np.random.default_rng(7).uniform(0, 255, [3, size, size, 3]).astype(np.float32)


def _random_weights(session, variables):
    rng = np.random.default_rng(11)
    for variable in variables:
        shape = variable.shape.as_list()
        scale = 0.05 if variable.op.name.endswith("kernel") else 0.5
        value = rng.normal(0.0, scale, shape)
        if variable.op.name.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        variable.load(value.astype(np.float32), session)


def run(action, folder, model, size, num_classes):
    folder.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3])
        logits = model_fn.build_logits(images, config.ModelConfig(model, num_classes, size), training=False)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            if action == "save":
                session.run(tf.compat.v1.global_variables_initializer())
                _random_weights(session, tf.compat.v1.global_variables())
                saver.save(session, str(folder / "model.ckpt"))
            else:
                saver.restore(session, str(folder / "model.ckpt"))
            values = session.run(logits, {images: _images(size)})
    np.save(folder / f"logits-{action}.npy", values)
    _training_step(action, folder, model, size, num_classes)


def _training_step(action, folder, model, size, num_classes):
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3])
        logits = model_fn.build_logits(images, config.ModelConfig(model, num_classes, size), training=True)
        updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        statistics = [v for v in tf.compat.v1.global_variables() if "/moving_" in v.op.name]
        with tf.compat.v1.Session() as session:
            tf.compat.v1.train.Saver().restore(session, str(folder / "model.ckpt"))
            values, _ = session.run([logits, updates], {images: _images(size)})
            moved = session.run(statistics)
    np.save(folder / f"training-logits-{action}.npy", values)
    np.save(folder / f"statistics-{action}.npy", np.concatenate([value.ravel() for value in moved]))


def main(argv):
    action, folder = argv[1], pathlib.Path(argv[2])
    for spec in argv[3:]:
        model, size, num_classes = spec.split(":")
        run(action, folder / model, model, int(size), int(num_classes))
    imported = "tensorflow_estimator" in sys.modules  # before hasattr, which imports it lazily on 2.15
    print(json.dumps({"tensorflow": tf.__version__, "tensorflow_estimator_imported": imported,
                      "has_estimator": hasattr(tf, "estimator")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

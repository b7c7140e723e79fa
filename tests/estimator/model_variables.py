"""The variable list of every model, as the golden file records it, and the script that writes it.

``tests/estimator/testdata/model_variables.json`` was written by this file from
the models as they were built with ``tf.compat.v1.layers`` (TensorFlow 2.15),
before bwtf's own layer functions replaced them: a checkpoint written then must
restore now, so every model must still create exactly these variables (name,
shape, dtype, trainable). The tests import ``variable_list``; the 2.21 test runs
this file as a script in the other interpreter (``--list``) and compares its
output with the same golden file.

    .venv/bin/python tests/estimator/model_variables.py --write
"""
import json
import pathlib
import sys

GOLDEN = pathlib.Path(__file__).resolve().parent / "testdata" / "model_variables.json"
# (model, image size, classes): each model at its default setting and at a small one.
SETTINGS = (
    ("resnet50", 224, 1000), ("resnet50", 32, 10),
    ("inception_v3", 299, 1000), ("inception_v3", 75, 10),
    ("alexnet", 224, 1000), ("alexnet", 63, 10),
    ("small_cnn", 64, 1000), ("small_cnn", 16, 10),
)


def setting_key(name, size, num_classes):
    return f"{name}-{size}px-{num_classes}classes"


def variable_list(name, size, num_classes, training=True, precision="fp32"):
    """[[name, shape, dtype, trainable], ...] of the model built in a fresh graph, in creation order."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from bwtf.estimator import config, model_fn  # pylint: disable=import-outside-toplevel

    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3])
        model_fn.build_logits(images, config.ModelConfig(name, num_classes, size), training, precision)
        trainable = {v.op.name for v in tf.compat.v1.trainable_variables()}
        return [[v.op.name, v.shape.as_list(), v.dtype.base_dtype.name, v.op.name in trainable]
                for v in tf.compat.v1.global_variables()]


def all_variable_lists(precision="fp32"):
    return {setting_key(*setting): variable_list(*setting, precision=precision) for setting in SETTINGS}


def main(argv):
    if argv[1:] == ["--write"]:
        lists = all_variable_lists()
        # One variable per line, so a diff of the golden file reads as a diff of the checkpoint layout.
        blocks = [json.dumps(key) + ": [\n" + ",\n".join(json.dumps(entry) for entry in entries) + "\n]"
                  for key, entries in lists.items()]
        GOLDEN.write_text("{\n" + ",\n".join(blocks) + "\n}\n")
        return 0
    if argv[1:2] == ["--list"]:  # --list <precision>: the lists as JSON on stdout
        print(json.dumps(all_variable_lists(argv[3] if len(argv) > 3 else "fp32")))
        return 0
    print(f"usage: {argv[0]} --write | --list [fp32|bf16|fp16]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""bwtf's training against the references: parameter counts, checkpoint layout, model recipes.

The expected figures are published ones, not bwtf's own output: torchvision's
model pages and the Keras applications table.
"""
import dataclasses
import hashlib

import pytest
import tensorflow as tf

from bwtf.estimator import config, model_fn, models

# torchvision inception_v3 counts 27,161,264 with its auxiliary head, which bwtf
# leaves out: InceptionAux is a 1x1 conv 768->128 (+BN), a 5x5 conv 128->768
# (+BN) and a 768->1000 fully connected layer with bias.
_INCEPTION_AUX = 768 * 128 + 2 * 128 + 5 * 5 * 128 * 768 + 2 * 768 + 768 * 1000 + 1000
_PUBLISHED = {
    "resnet50": (224, 25_557_032),                      # torchvision resnet50
    "alexnet": (224, 61_100_840),                       # torchvision alexnet
    "inception_v3": (299, 27_161_264 - _INCEPTION_AUX),  # torchvision inception_v3, no aux head
}


def _trainable_parameters(name, size, num_classes=1000):
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3])
        model_fn.build_logits(images, config.ModelConfig(name, num_classes, size), training=True)
        return models.parameter_count(tf.compat.v1.trainable_variables())


@pytest.mark.parametrize("name", sorted(_PUBLISHED))
def test_parameter_count_matches_the_published_figure(name):
    size, published = _PUBLISHED[name]
    assert _trainable_parameters(name, size) == published


def test_inception_v3_count_agrees_with_keras_too():
    # Keras InceptionV3 (include_top, no aux head): 23,817,352 trainable, with
    # batch norm scale=False; bwtf's batch norm also learns one gamma per channel.
    gammas = 0
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 299, 299, 3])
        model_fn.build_logits(images, config.ModelConfig("inception_v3", 1000, 299), training=True)
        for variable in tf.compat.v1.trainable_variables():
            if variable.op.name.endswith("/gamma"):
                gammas += int(variable.shape[0])
    assert _trainable_parameters("inception_v3", 299) - gammas == 23_817_352


@pytest.mark.parametrize("size", [63, 100, 299])
def test_alexnet_keeps_fc6_at_9216_inputs_at_any_size(size):
    # torchvision's adaptive 6x6 pool: the parameter count does not depend on the input size.
    assert _trainable_parameters("alexnet", size) == 61_100_840


def test_small_cnn_count_is_what_its_docstring_says():
    assert "125,688 parameters" in models.small_cnn.__doc__
    assert _trainable_parameters("small_cnn", 64) == 125_688


# sha256 of the sorted "name:shape" lines of model_fn.model_variable_shapes at
# 1000 classes, as released: checkpoints written before must keep restoring.
_CHECKPOINT_LAYOUT = {
    "resnet50": (224, 267, "430df32a5e8a8f24b3e7b28afc3ec463c1e04de2175767ca167623e11e8a21f5"),
    "inception_v3": (299, 472, "ad4e01fd85bc23c66bca3897ace2b95da483dd947027dfdf6e6d3dc2e8c2c2c7"),
}


@pytest.mark.parametrize("name", sorted(_CHECKPOINT_LAYOUT))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_variable_names_and_shapes_are_unchanged(name, precision):
    size, count, digest = _CHECKPOINT_LAYOUT[name]
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3])
        model_fn.build_logits(images, config.ModelConfig(name, 1000, size), False, precision)
        shapes = {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}
        assert {v.dtype.base_dtype for v in tf.compat.v1.global_variables()} == {tf.float32}
    text = "\n".join(f"{key}:{value}" for key, value in sorted(shapes.items()))
    assert (len(shapes), hashlib.sha256(text.encode()).hexdigest()) == (count, digest)


def test_alexnet_has_no_batch_norm_and_pools_to_6x6():
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3])
        model_fn.build_logits(images, config.ModelConfig("alexnet", 1000, 224), training=True)
        shapes = {v.op.name: v.shape.as_list() for v in tf.compat.v1.trainable_variables()}
    assert shapes["model/fc6/kernel"] == [256 * 6 * 6, 4096]
    assert shapes["model/conv1/kernel"] == [11, 11, 3, 64] and shapes["model/conv1/bias"] == [64]
    assert not any("batch_normalization" in name for name in shapes)


def test_logits_are_float32_under_bf16():
    with tf.Graph().as_default():
        images = tf.random.uniform([2, 32, 32, 3], maxval=255.0, seed=1)
        model_fn.build_logits(images, config.ModelConfig("small_cnn", 10, 32), training=False, precision="bf16")
        graph = tf.compat.v1.get_default_graph()
        matmuls = [op for op in graph.get_operations() if op.type == "MatMul" and "logits" in op.name]
    assert matmuls and all(op.outputs[0].dtype == tf.float32 for op in matmuls)


def test_each_model_states_its_eval_crop_and_recipe():
    for name in models.MODEL_NAMES:
        assert models.eval_crop(name) in ("resize_shorter_side", "central_fraction")
        assert set(models.recipe(name)) <= {f.name for f in dataclasses.fields(config.OptimizerConfig)} | {
            "warmup_fraction"}
    assert models.eval_crop("inception_v3") == "central_fraction"
    assert models.eval_crop("resnet50") == models.eval_crop("alexnet") == "resize_shorter_side"

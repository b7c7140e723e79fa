"""bwtf's own layers (``models._layers``) against ``tf.compat.v1.layers`` and the golden variable list.

The reference is TensorFlow's own ``tf.compat.v1.layers`` (Keras 2, present on
2.15 only), which the models used before the rewrite: with the same weights,
both must give the same outputs in training and inference mode, the same
moving mean and variance after one update, the same variables, collections and
weight-decay term. The whole models are compared too, by building them once
with ``_layers``' functions swapped for the reference ones. The golden list
(``testdata/model_variables.json``) was dumped from the models before the
rewrite: checkpoints written then must restore now.
"""
import json

import numpy as np
import pytest
import tensorflow as tf

from bwtf.estimator import config, model_fn, models
from bwtf.estimator.models import _layers

import model_variables



def _keras2_v1_layers():
    """tf.compat.v1.layers, or None where it needs Keras 2 and has none (TensorFlow 2.16 and later)."""
    try:
        layers = tf.compat.v1.layers
        return layers if layers.conv2d else None
    except (AttributeError, ImportError):  # 2.21: "`conv2d` is not available with Keras 3."
        return None


_v1 = _keras2_v1_layers()
needs_v1_layers = pytest.mark.skipif(_v1 is None, reason="tf.compat.v1.layers (Keras 2) is not installed")


def _reference_layers():
    """What ``_layers`` replaced, over tf.compat.v1.layers (bwtf's models before the rewrite)."""
    def batch_norm(inputs, training, name=None, zero_init=False):
        gamma = tf.compat.v1.zeros_initializer() if zero_init else tf.compat.v1.ones_initializer()
        return _v1.batch_normalization(inputs, momentum=0.9, epsilon=1e-5, gamma_initializer=gamma,
                                       training=training, fused=True, name=name)

    def conv(inputs, filters, kernel_size, strides=1, padding="same", name=None, use_bias=False):
        return _v1.conv2d(inputs, filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
                          kernel_initializer=tf.compat.v1.variance_scaling_initializer(scale=2.0, mode="fan_out"),
                          name=name)

    def dense(inputs, units, name=None):
        return _v1.dense(inputs, units, kernel_initializer=tf.compat.v1.random_normal_initializer(stddev=0.01),
                         name=name)

    return dict(
        batch_norm=batch_norm, conv=conv, dense=dense,
        max_pool=lambda net, size, strides, padding: _v1.max_pooling2d(net, size, strides, padding=padding),
        average_pool=lambda net, size, strides, padding: _v1.average_pooling2d(net, size, strides, padding=padding),
        dropout=lambda net, rate, training: _v1.dropout(net, rate, training=training),
        flatten=_v1.flatten if _v1 else None,
    )


def _every_layer(images, training):
    """A network that calls each layer function with each option the models use."""
    net = _layers.conv_bn_relu(images, 8, 3, training, name="stem")
    net = _layers.conv(net, 6, (1, 3), strides=2, padding="valid", use_bias=True)
    net = _layers.batch_norm(net, training, zero_init=True)
    net = _layers.conv(net, 6, 3, name="named", use_bias=True)
    net = _layers.average_pool(_layers.max_pool(net, 3, 2, "same"), 3, 1, "same")
    net = _layers.max_pool(net, 2, 1, "valid")
    net = _layers.flatten(net)
    if not training:  # training dropout is random; compared on its own below
        net = _layers.dropout(net, 0.5, training)
    net = tf.nn.relu(_layers.dense(net, 16))
    return _layers.classifier(net, 5)


def _model(name, size):
    def build(images, training, precision):
        with tf.compat.v1.variable_scope(model_fn.MODEL_SCOPE, custom_getter=model_fn._variables_getter):
            net = tf.cast(images / 255.0, model_fn._COMPUTE_DTYPES[precision])
            return tf.cast(models.logits(name, net, 7, training), tf.float32)
    return build, size


_NETWORKS = {
    "every_layer": (lambda images, training, precision: _model_scope(_every_layer, images, training, precision), 12),
    "small_cnn": _model("small_cnn", 16),
    "resnet50": _model("resnet50", 32),
    "alexnet": _model("alexnet", 63),
}


def _model_scope(network, images, training, precision):
    with tf.compat.v1.variable_scope(model_fn.MODEL_SCOPE, custom_getter=model_fn._variables_getter):
        return tf.cast(network(tf.cast(images / 255.0, model_fn._COMPUTE_DTYPES[precision]), training), tf.float32)


def _weights(seed=0):
    """Random values for every variable of the default graph (moving variances positive), by name."""
    rng = np.random.default_rng(seed)
    values = {}
    for variable in tf.compat.v1.global_variables():
        shape = variable.shape.as_list()
        value = rng.normal(0.0, 0.5, shape)
        if variable.op.name.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        values[variable.op.name] = value.astype(variable.dtype.base_dtype.as_numpy_dtype)
    return values


def _run(network_name, training, precision):
    """What a user of the layers sees: variables, collections, outputs, moving statistics after one update."""
    network, size = _NETWORKS[network_name]
    images_value = np.random.default_rng(1).uniform(0, 255, [4, size, size, 3]).astype(np.float32)
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3])
        logits = network(images, training, precision)
        graph_keys = tf.compat.v1.GraphKeys
        found = {
            "variables": [(v.op.name, v.shape.as_list(), v.dtype.base_dtype.name, type(v).__name__)
                          for v in tf.compat.v1.global_variables()],
            "trainable": [v.op.name for v in tf.compat.v1.trainable_variables()],
            "collections": {key: len(tf.compat.v1.get_collection(key)) for key in (
                graph_keys.UPDATE_OPS, graph_keys.REGULARIZATION_LOSSES, graph_keys.MOVING_AVERAGE_VARIABLES,
                graph_keys.MODEL_VARIABLES, graph_keys.LOCAL_VARIABLES)},
        }
        decayed = [v for v in tf.compat.v1.trainable_variables() if "batch_normalization" not in v.name]
        weight_decay = tf.add_n([tf.nn.l2_loss(v) for v in decayed])
        regularization = tf.compat.v1.losses.get_regularization_loss()
        statistics = [v for v in tf.compat.v1.global_variables() if "moving_" in v.op.name]
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            weights = _weights()
            for variable in tf.compat.v1.global_variables():
                variable.load(weights[variable.op.name], session)
            found["logits"] = session.run(logits, {images: images_value})
            found["weight_decay"], found["regularization"] = session.run([weight_decay, regularization])
            session.run(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS), {images: images_value})
            found["statistics"] = session.run(statistics)
    return found


_CASES = ([("every_layer", training, precision) for training in (True, False) for precision in ("fp32", "bf16", "fp16")]
          + [("small_cnn", True, "fp32"), ("small_cnn", False, "fp32"), ("small_cnn", True, "bf16"),
             ("resnet50", True, "fp32"), ("alexnet", False, "fp32")])  # alexnet trains with random dropout


@needs_v1_layers
@pytest.mark.parametrize("network,training,precision", _CASES)
def test_same_as_tf_compat_v1_layers_on_the_same_weights(network, training, precision, monkeypatch):
    ours = _run(network, training, precision)
    for name, function in _reference_layers().items():
        monkeypatch.setattr(_layers, name, function)
    reference = _run(network, training, precision)
    for key in ("variables", "trainable", "collections", "regularization"):
        assert ours[key] == reference[key], key
    # The same values summed by multi-threaded reductions: equal up to the order of the additions.
    assert ours["weight_decay"] == pytest.approx(reference["weight_decay"], rel=1e-6)
    np.testing.assert_array_equal(ours["logits"], reference["logits"])
    assert len(ours["statistics"]) == len(reference["statistics"])
    for got, expected in zip(ours["statistics"], reference["statistics"]):
        np.testing.assert_array_equal(got, expected)
    if training:
        assert ours["collections"][tf.compat.v1.GraphKeys.UPDATE_OPS] == len(ours["statistics"]) > 0


def test_batch_norm_statistics_follow_the_batch_in_training_only():
    # Independent of any reference: the moving mean moves 10 % of the way to the batch mean.
    batch = np.random.default_rng(2).normal(3.0, 2.0, [8, 4, 4, 2]).astype(np.float32)
    with tf.Graph().as_default():
        output = _layers.batch_norm(tf.constant(batch), training=True)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            normalized, _ = session.run([output, tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)])
            moving_mean = session.run(tf.compat.v1.global_variables()[2])
    np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(moving_mean, 0.1 * batch.mean(axis=(0, 1, 2)), rtol=1e-5)
    with tf.Graph().as_default():
        _layers.batch_norm(tf.constant(batch), training=False)
        assert not tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)


def test_dropout_drops_and_rescales_in_training_only():
    ones = np.ones([200, 100], np.float32)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        dropped, kept = session.run([_layers.dropout(tf.constant(ones), 0.5, True),
                                     _layers.dropout(tf.constant(ones), 0.5, False)])
    assert set(np.unique(dropped)) == {0.0, 2.0} and 0.45 < (dropped == 0).mean() < 0.55
    np.testing.assert_array_equal(kept, ones)


def test_training_must_be_a_python_bool():
    with tf.Graph().as_default(), pytest.raises(TypeError, match="Python bool"):
        _layers.batch_norm(tf.zeros([1, 2, 2, 3]), training=tf.constant(True))


def _golden():
    return json.loads(model_variables.GOLDEN.read_text())


@pytest.mark.parametrize("setting", model_variables.SETTINGS, ids=lambda s: model_variables.setting_key(*s))
def test_every_model_creates_the_variables_of_the_golden_list(setting):
    assert model_variables.variable_list(*setting) == _golden()[model_variables.setting_key(*setting)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("training", [True, False])
def test_low_precision_and_inference_graphs_keep_the_same_float32_variables(precision, training):
    for setting in model_variables.SETTINGS[1::2]:  # the small settings
        found = model_variables.variable_list(*setting, training=training, precision=precision)
        assert found == _golden()[model_variables.setting_key(*setting)], setting


def test_resnet50_keeps_its_published_parameter_count():
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3])
        model_fn.build_logits(images, config.ModelConfig("resnet50", 1000, 224), training=True)
        assert models.parameter_count(tf.compat.v1.trainable_variables()) == 25_557_032


def _initial_values(network_name):
    network, size = _NETWORKS[network_name]
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(3)
        network(tf.zeros([2, size, size, 3]), True, "fp32")
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return session.run(tf.compat.v1.global_variables())


@needs_v1_layers
@pytest.mark.parametrize("network", ["every_layer", "small_cnn"])
def test_same_initial_values_as_tf_compat_v1_layers_under_a_graph_seed(network, monkeypatch):
    # A run started from scratch with a fixed seed starts from the weights it started from before.
    ours = _initial_values(network)
    for name, function in _reference_layers().items():
        monkeypatch.setattr(_layers, name, function)
    reference = _initial_values(network)
    assert len(ours) == len(reference)
    for got, expected in zip(ours, reference):
        np.testing.assert_array_equal(got, expected)

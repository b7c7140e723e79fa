"""The model_fn contract without ``tf.estimator``: ``ModeKeys``, ``EstimatorSpec``, ``PredictOutput``,
``ServingInputReceiver`` and ``WarmStartSettings``.

    from bwtf.estimator.runner import spec
    spec.ModeKeys.TRAIN == "train"; spec.EstimatorSpec(mode, loss=..., train_op=...)
    spec.PredictOutput({"classes": ...}).as_signature_def(receiver_tensors)

With ``tf.estimator`` installed (TensorFlow 2.15) the three names are
``tf.estimator``'s own types, so a model_fn that uses them returns exactly
what it always did and a user's ``tf.estimator.Estimator`` keeps working.
Without it (TensorFlow 2.16 and later) they are bwtf's: the same mode
strings ('train', 'eval', 'infer'), the same EstimatorSpec fields (a
namedtuple, so ``_replace`` works) and the same required fields per mode.
bwtf's runner (``bwtf.estimator.runner``) accepts either.

Deliberately left out: ``tf.estimator``'s other export outputs (classification,
regression) and TPU specs; bwtf's models export a PredictOutput only.
"""
import collections

import tensorflow as tf

_TF_ESTIMATOR = getattr(tf, "estimator", None)
HAS_TF_ESTIMATOR = _TF_ESTIMATOR is not None


class _ModeKeys:
    """The three modes, as the strings tf.estimator uses (SavedModel tags follow from them)."""

    TRAIN = "train"
    EVAL = "eval"
    PREDICT = "infer"


_SPEC_FIELDS = ("mode", "predictions", "loss", "train_op", "eval_metric_ops", "export_outputs",
                "training_chief_hooks", "training_hooks", "scaffold", "evaluation_hooks",
                "prediction_hooks")


class _EstimatorSpec(collections.namedtuple("EstimatorSpec", _SPEC_FIELDS)):
    """What a model_fn returns: the fields and per-mode requirements of tf.estimator.EstimatorSpec."""

    def __new__(cls, mode, predictions=None, loss=None, train_op=None, eval_metric_ops=None,
                export_outputs=None, training_chief_hooks=None, training_hooks=None, scaffold=None,
                evaluation_hooks=None, prediction_hooks=None):
        if mode not in (_ModeKeys.TRAIN, _ModeKeys.EVAL, _ModeKeys.PREDICT):
            raise ValueError(f"EstimatorSpec mode must be 'train', 'eval' or 'infer', got {mode!r}")
        if mode == _ModeKeys.TRAIN and (loss is None or train_op is None):
            raise ValueError("EstimatorSpec in TRAIN mode needs loss and train_op")
        if mode == _ModeKeys.EVAL and loss is None:
            raise ValueError("EstimatorSpec in EVAL mode needs loss")
        if mode == _ModeKeys.PREDICT and predictions is None:
            raise ValueError("EstimatorSpec in PREDICT mode needs predictions")
        for name, metric in (eval_metric_ops or {}).items():
            if not (isinstance(metric, tuple) and len(metric) == 2):
                raise TypeError(f"eval_metric_ops[{name!r}] must be a (value, update_op) pair, got {metric!r}")
        return super().__new__(
            cls, mode, predictions if predictions is not None else {}, loss, train_op,
            dict(eval_metric_ops or {}), export_outputs, tuple(training_chief_hooks or ()),
            tuple(training_hooks or ()), scaffold or tf.compat.v1.train.Scaffold(),
            tuple(evaluation_hooks or ()), tuple(prediction_hooks or ()))


class _PredictOutput:
    """A predict signature over a dict of output tensors (or one tensor, named "output")."""

    def __init__(self, outputs):
        self.outputs = outputs if isinstance(outputs, dict) else {"output": outputs}

    def as_signature_def(self, receiver_tensors):
        return tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(receiver_tensors, self.outputs)


class _ServingInputReceiver(collections.namedtuple("ServingInputReceiver", ("features", "receiver_tensors"))):
    """What a serving_input_receiver_fn returns: the model's features and the tensors a request fills.

    A single tensor is wrapped as {"feature": tensor} (and {"input": tensor}
    for the receiver), as tf.estimator does, so a model_fn sees the same
    features under either.
    """

    def __new__(cls, features, receiver_tensors):
        features = features if isinstance(features, dict) else {"feature": features}
        receiver_tensors = receiver_tensors if isinstance(receiver_tensors, dict) else {"input": receiver_tensors}
        return super().__new__(cls, features, receiver_tensors)


class _WarmStartSettings(collections.namedtuple(
        "WarmStartSettings", ("ckpt_to_initialize_from", "vars_to_warm_start", "var_name_to_vocab_info",
                              "var_name_to_prev_var_name"))):
    """Which variables to initialise from which checkpoint (tf.compat.v1.train.warm_start's arguments)."""

    def __new__(cls, ckpt_to_initialize_from, vars_to_warm_start=".*", var_name_to_vocab_info=None,
                var_name_to_prev_var_name=None):
        return super().__new__(cls, ckpt_to_initialize_from, vars_to_warm_start,
                               var_name_to_vocab_info or {}, var_name_to_prev_var_name or {})


if HAS_TF_ESTIMATOR:
    ModeKeys = _TF_ESTIMATOR.ModeKeys
    EstimatorSpec = _TF_ESTIMATOR.EstimatorSpec
    PredictOutput = _TF_ESTIMATOR.export.PredictOutput
    ServingInputReceiver = _TF_ESTIMATOR.export.ServingInputReceiver
    WarmStartSettings = _TF_ESTIMATOR.WarmStartSettings
else:
    ModeKeys = _ModeKeys
    EstimatorSpec = _EstimatorSpec
    PredictOutput = _PredictOutput
    ServingInputReceiver = _ServingInputReceiver
    WarmStartSettings = _WarmStartSettings

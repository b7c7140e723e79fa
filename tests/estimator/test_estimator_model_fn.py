"""model_fn in every mode for every model, the precisions, the LR schedule, restore checks."""
import math

import numpy as np
import pytest
import tensorflow as tf

from bwtf.estimator import config, model_fn
from bwtf.estimator.runner import spec
from bwtf.estimator.training import step_limit as _step_limit
from bwtf.estimator.training.schedule import learning_rate

_MODES = spec.ModeKeys
# Small inputs keep graph construction cheap; each is the model's minimum or close.
_SIZES = {"small_cnn": 32, "alexnet": 64, "resnet50": 32, "inception_v3": 75}
_BATCH, _CLASSES = 2, 7


def _train_config(name, tmp_path, **overrides):
    return config.TrainConfig(model=config.ModelConfig(name, _CLASSES, _SIZES[name]), batch_size=_BATCH,
                              model_dir=str(tmp_path), **overrides)


def _spec(train_config, mode):
    size = train_config.model.image_size
    images = tf.random.uniform([_BATCH, size, size, 3], maxval=255.0, seed=1)
    labels = tf.constant([1, 5], tf.int64) if mode != _MODES.PREDICT else None
    return model_fn.model_fn({"image": images}, labels, mode, train_config)


@pytest.mark.parametrize("name", sorted(_SIZES))
def test_every_model_in_every_mode(name, tmp_path):
    train_config = _train_config(name, tmp_path)
    with tf.Graph().as_default():
        predict = _spec(train_config, _MODES.PREDICT)
        assert predict.predictions["probabilities"].shape.as_list() == [_BATCH, _CLASSES]
        assert predict.predictions["classes"].shape.as_list() == [_BATCH]
        assert predict.predictions["top_5_classes"].shape.as_list() == [_BATCH, 5]
        assert "serving_default" in predict.export_outputs
    with tf.Graph().as_default():
        evaluate = _spec(train_config, _MODES.EVAL)
        assert set(evaluate.eval_metric_ops) == {"precision_at_1", "precision_at_5", "cross_entropy"}
        assert evaluate.loss.shape.as_list() == []
    with tf.Graph().as_default():
        train = _spec(train_config, _MODES.TRAIN)
        assert train.train_op is not None and train.loss.dtype == tf.float32
        assert train.training_chief_hooks, "the bwtf.ckpt chief hooks must be returned"
        kernel_names = [v.op.name for v in tf.compat.v1.trainable_variables()]
        assert all(n.startswith(model_fn.MODEL_SCOPE + "/") for n in kernel_names)
        if name != "alexnet":  # torchvision's AlexNet has no batch norm.
            assert tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS), "batch norm must update"


def _run_steps(train_config, steps):
    with tf.Graph().as_default():
        spec = _spec(train_config, _MODES.TRAIN)
        with tf.compat.v1.Session() as session:
            session.run([tf.compat.v1.global_variables_initializer(), tf.compat.v1.local_variables_initializer()])
            losses = [session.run([spec.train_op, spec.loss])[1] for _ in range(steps)]
            dtypes = {v.dtype.base_dtype for v in tf.compat.v1.global_variables()}
    return losses, dtypes


@pytest.mark.parametrize("precision, xla", [("fp16", False), ("bf16", False), ("fp32", True), ("bf16", True)])
def test_reduced_precision_and_xla_train_on_cpu(precision, xla, tmp_path):
    train_config = _train_config("small_cnn", tmp_path, precision=precision, xla=xla, train_steps=10)
    losses, dtypes = _run_steps(train_config, 3)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < math.log(_CLASSES) + 1.0
    assert tf.float16 not in dtypes and tf.bfloat16 not in dtypes, "variables must stay float32"


def test_fp16_uses_loss_scaling(tmp_path):
    with tf.Graph().as_default():
        _spec(_train_config("small_cnn", tmp_path, precision="fp16"), _MODES.TRAIN)
        names = [v.op.name for v in tf.compat.v1.global_variables()]
    assert any("loss_scale" in n for n in names)


def _lr_at(steps, **optimizer):
    train_config = config.TrainConfig(
        model=config.ModelConfig("small_cnn", 10, 32), batch_size=64, num_workers=4, train_steps=100,
        optimizer=config.OptimizerConfig(**optimizer))
    with tf.Graph().as_default():
        step = tf.compat.v1.placeholder(tf.int64, [])
        lr = learning_rate(step, train_config)
        with tf.compat.v1.Session() as session:
            return [float(session.run(lr, {step: s})) for s in steps]


def test_linear_scaling_with_warmup_and_cosine_decay():
    peak = 0.1 * 64 * 4 / 256
    values = _lr_at([0, 5, 10, 55, 100], base_lr=0.1, warmup_steps=10, decay="cosine")
    np.testing.assert_allclose(values, [0.0, peak / 2, peak, peak / 2, 0.0], atol=1e-6)


def test_sqrt_scaling_with_step_decay():
    peak = 0.4 * math.sqrt(4)
    values = _lr_at([0, 29, 30, 60, 99], base_lr=0.4, lr_scaling="sqrt", decay="step",
                    decay_boundaries=(0.3, 0.6), decay_factor=0.1)
    np.testing.assert_allclose(values, [peak, peak, peak, peak * 0.1, peak * 0.01], rtol=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda: config.ModelConfig("vgg16", 10, 224), "model must be one of"),
    (lambda: config.ModelConfig("resnet50", 1, 224), "num_classes must be at least 2"),
    (lambda: config.ModelConfig("inception_v3", 10, 64), "too small for inception_v3"),
    (lambda: config.ModelConfig("small_cnn", 3, 32, class_names=("a",)), "class_names has 1 entries"),
    (lambda: config.OptimizerConfig(lr_scaling="cubic"), "lr_scaling must be one of"),
    (lambda: config.OptimizerConfig(decay_boundaries=(0.6, 0.3)), "increasing fractions"),
    (lambda: config.OptimizerConfig(label_smoothing=1.0), "label_smoothing"),
    (lambda: config.TrainConfig(config.ModelConfig("small_cnn", 10, 32), batch_size=0), "batch_size must be"),
    (lambda: config.TrainConfig(config.ModelConfig("small_cnn", 10, 32), precision="fp8"), "precision"),
    (lambda: config.TrainConfig(config.ModelConfig("small_cnn", 10, 32), sync_replicas=True,
                                distribution="collective"), "sync_replicas only applies"),
    (lambda: config.DatasetConfig(use_synthetic_data=True), "needs num_classes"),
])
def test_bad_configuration_values(make, message):
    with pytest.raises(config.ConfigError, match=message):
        make()


def _save_checkpoint(train_config, path):
    with tf.Graph().as_default():
        size = train_config.model.image_size
        model_fn.build_logits(tf.zeros([1, size, size, 3]), train_config.model, training=False)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return tf.compat.v1.train.Saver().save(session, str(path / "model.ckpt"))


@pytest.mark.parametrize("other, message", [
    (config.ModelConfig("small_cnn", 5, 32), "5 classes"),
    (config.ModelConfig("alexnet", _CLASSES, 64), "not written by model 'alexnet'"),
])
def test_checkpoint_from_another_model_or_class_count_is_refused(tmp_path, other, message):
    path = _save_checkpoint(_train_config("small_cnn", tmp_path), tmp_path)
    model_fn.check_checkpoint_compatible(path, _train_config("small_cnn", tmp_path))
    with pytest.raises(model_fn.CheckpointMismatchError, match=message):
        model_fn.check_checkpoint_compatible(path, config.TrainConfig(model=other))


@pytest.mark.parametrize("last_step", [1, 40])
def test_racing_updates_stop_at_the_last_step_and_none_applies_beyond(last_step):
    """Eight threads run the train_op of one session 25 times each (200 runs) with
    a limit of ``last_step``: the global step ends at exactly ``last_step`` and
    exactly that many updates applied (each moves ``v`` by the learning rate)."""
    import threading  # pylint: disable=import-outside-toplevel

    with tf.Graph().as_default():
        step = tf.compat.v1.train.get_or_create_global_step()
        v = tf.compat.v1.get_variable("v", [], initializer=tf.zeros_initializer())
        optimizer = _step_limit.StepLimitedOptimizer(tf.compat.v1.train.GradientDescentOptimizer(0.5), last_step)
        train_op = optimizer.minimize(v * 1.0, global_step=step)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())

            def worker():
                for _ in range(25):
                    sess.run(train_op)

            threads = [threading.Thread(target=worker) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sess.run(step) == last_step
            assert sess.run(v) == pytest.approx(-0.5 * last_step)


@pytest.mark.parametrize("precision, xla", [("fp32", True), ("fp16", False)])
def test_ps_training_graph_stops_its_updates_at_train_steps(precision, xla, tmp_path):
    """model_fn's TRAIN graph under distribution=ps (XLA, dynamic loss scaling):
    five runs of the train_op with train_steps=3 leave the global step at 3."""
    train_config = _train_config("small_cnn", tmp_path, precision=precision, xla=xla, train_steps=3,
                                 distribution="ps")
    with tf.Graph().as_default():
        spec = _spec(train_config, _MODES.TRAIN)
        step = tf.compat.v1.train.get_global_step()
        with tf.compat.v1.Session() as sess:
            sess.run([tf.compat.v1.global_variables_initializer(), tf.compat.v1.local_variables_initializer()])
            for _ in range(5):
                sess.run(spec.train_op)
            assert sess.run(step) == 3


def _gated_ops(graph):
    """The ops an asynchronous update runs while its update gate is held: those
    that the gate's release waits for and that wait for the gate's lock."""
    gate = [op for op in graph.get_operations() if op.name.startswith("bwtf_update_gate")]
    (lock,) = [op for op in gate if op.type == "MutexLock"]
    (release,) = [op for op in gate if op.type == "ConsumeMutexLock"]

    def reach(start, step):
        seen, todo = set(), [start]
        while todo:
            op = todo.pop()
            for other in step(op):
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        return seen

    after_lock = reach(lock, lambda op: [c for out in op.outputs for c in out.consumers()] + op._control_outputs)
    before_release = reach(release, lambda op: [t.op for t in op.inputs] + list(op.control_inputs))
    return after_lock & before_release


def _waited_for(op):
    """Every op ``op`` waits for, directly or not (data and control inputs)."""
    seen, todo = set(), [op]
    while todo:
        current = todo.pop()
        for other in [t.op for t in current.inputs] + list(current.control_inputs):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


@pytest.mark.parametrize("precision,xla,sync_replicas", [
    ("fp32", False, False), ("fp16", True, False), ("fp32", False, True), ("fp16", False, True)])
def test_the_gated_part_of_an_update_runs_on_the_ps_alone(precision, xla, sync_replicas, tmp_path):
    """A worker that freezes (SIGSTOP, a suspended job) while its update gate is
    held would stop every checkpoint snapshot: nothing gated may run on it.
    Under --sync_replicas the gated update is the chief's aggregated one: the
    gate waits for every aggregated gradient (taken on the ps) and for the
    learning rate (computed on the chief), and holds the loss scaling's update."""
    train_config = _train_config("small_cnn", tmp_path, precision=precision, xla=xla, train_steps=100,
                                 distribution="ps", sync_replicas=sync_replicas, num_workers=2)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.device(tf.compat.v1.train.replica_device_setter(
            ps_tasks=2, worker_device="/job:worker/task:0")):
        _spec(train_config, _MODES.TRAIN)
    gated = _gated_ops(graph)
    on_worker = sorted(f"{op.name} ({op.type}) on {op.device!r}" for op in gated if "/job:ps/" not in op.device)
    assert not on_worker, on_worker[:10]
    if sync_replicas:
        (lock,) = [op for op in graph.get_operations() if op.type == "MutexLock"]
        waits = _waited_for(lock)
        takes = [op for op in graph.get_operations() if "AccumulatorTakeGradient" in op.type]
        assert takes and set(takes) <= waits, "the gate is taken before the aggregated gradients"
        assert all("/job:ps/" in op.device for op in takes)
        assert any(op.name.startswith("lr_schedule/") for op in waits), "the learning rate may arrive late"
        # Every conditional update (the step limit's, and under fp16 the dynamic loss
        # scale's finiteness check and its own update) is behind the gate.
        conds = {op for op in graph.get_operations() if op.type in ("If", "StatelessIf")}
        assert len(conds) == (2 if precision == "fp16" else 1) and conds <= gated, sorted(op.name for op in conds)
        if precision == "fp16":
            assert any(op.type == "IsFinite" for op in gated)
    # The updates sit in the step limit's cond (a function), each beside its variable.
    assert any(op.type in ("If", "StatelessIf") for op in gated), "the variables' updates are not behind the gate"
    applies = [node for function in graph.as_graph_def().library.function for node in function.node_def
               if node.op.startswith(("ResourceApply", "Apply"))]
    assert applies and {node.device for node in applies} == {"/job:ps/task:0", "/job:ps/task:1"}


def test_evaluation_and_serving_graphs_take_no_update_gate(tmp_path):
    train_config = _train_config("small_cnn", tmp_path, distribution="ps")
    for mode in (_MODES.EVAL, _MODES.PREDICT):
        graph = tf.Graph()
        with graph.as_default():
            _spec(train_config, mode)
        types = {op.type for op in graph.get_operations()}
        assert not types & {"MutexV2", "MutexLock", "MutexLockV2"}, (mode, types & {"MutexV2", "MutexLock"})
        assert not [v for v in graph.get_operations() if "snapshot" in v.name], mode


def test_a_step_skipped_for_overflowing_fp16_gradients_claims_no_step(tmp_path):
    """Under dynamic loss scaling a step whose gradients overflow changes nothing,
    the global step included (as stock TensorFlow): --train_steps=N applies N updates."""
    train_config = _train_config("small_cnn", tmp_path, precision="fp16", train_steps=5, distribution="ps")
    with tf.Graph().as_default():
        step = tf.compat.v1.train.get_or_create_global_step()
        weight = tf.compat.v1.get_variable("w", initializer=1.0)
        scale = tf.compat.v1.placeholder(tf.float32, [])
        optimizer = model_fn._optimizer(train_config, 0.1)
        train_op = optimizer.minimize(weight * scale, global_step=step)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train_op, {scale: float("inf")})
            assert sess.run([step, weight]) == [0, 1.0]
            sess.run(train_op, {scale: 1.0})
            assert sess.run(step) == 1 and sess.run(weight) < 1.0


def test_serial_updates_stop_at_the_last_step_without_a_claim():
    """--sync_replicas: one applier (the chief's queue runner), so no lock and no claim; the step is
    added after the update by the optimizer itself, and nothing applies once it reaches the limit."""
    with tf.Graph().as_default() as graph:
        step = tf.compat.v1.train.get_or_create_global_step()
        v = tf.compat.v1.get_variable("v", [], initializer=tf.zeros_initializer())
        optimizer = _step_limit.StepLimitedOptimizer(tf.compat.v1.train.GradientDescentOptimizer(0.5), 3,
                                                     serial=True)
        train_op = optimizer.minimize(v * 1.0, global_step=step)
        assert not {op.type for op in graph.get_operations()} & {"MutexV2", "MutexLock"}
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(5):
                sess.run(train_op)
            assert sess.run(step) == 3 and sess.run(v) == pytest.approx(-1.5)

"""bwtf's training against the references: parameter counts, checkpoint layout, model recipes.

The expected figures are published ones, not bwtf's own output: torchvision's
model pages and the Keras applications table.
"""
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bwtf.estimator import _flags, config, inputs, model_fn, models
from bwtf.estimator.evaluation import runner
from bwtf.estimator.runner import spec
from estimator_helpers import run_train
from bwtf.estimator.training.schedule import learning_rate

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


# --- The learning rate: the linear rule over the batch of one update ---------------------------

def _lr_at(train_config, steps):
    with tf.Graph().as_default():
        step = tf.compat.v1.placeholder(tf.int64, [])
        lr = learning_rate(step, train_config)
        with tf.compat.v1.Session() as session:
            return [float(session.run(lr, {step: s})) for s in steps]


@pytest.mark.parametrize("distribution, sync_replicas, images_per_update", [
    ("ps", False, 256),        # asynchronous: each update is one worker's batch
    ("ps", True, 8 * 256),     # SyncReplicasOptimizer averages all 8 workers' batches
    ("collective", False, 8 * 256),
])
def test_linear_rule_scales_by_the_batch_of_one_update(distribution, sync_replicas, images_per_update):
    optimizer = config.OptimizerConfig(base_lr=0.1, warmup_steps=10, decay="constant")
    train_config = config.TrainConfig(
        model=config.ModelConfig("small_cnn", 10, 32), optimizer=optimizer, batch_size=256, num_workers=8,
        train_steps=100, distribution=distribution, sync_replicas=sync_replicas)
    peak = 0.1 * images_per_update / 256
    assert train_config.update_batch_size == images_per_update
    np.testing.assert_allclose(_lr_at(train_config, [0, 5, 10, 99]), [0.0, peak / 2, peak, peak], rtol=1e-6)


def test_one_process_uses_its_own_batch():
    train_config = config.TrainConfig(model=config.ModelConfig("small_cnn", 10, 32), batch_size=512,
                                      optimizer=config.OptimizerConfig(base_lr=0.1))
    assert train_config.update_batch_size == 512 and train_config.peak_lr == pytest.approx(0.2)


@pytest.mark.parametrize("sync_replicas, expected", [(False, 0.4), (True, 0.4 * 2)])
def test_sqrt_rule_counts_the_workers_of_one_update(sync_replicas, expected):
    train_config = config.TrainConfig(
        model=config.ModelConfig("small_cnn", 10, 32), batch_size=32, num_workers=4, distribution="ps",
        sync_replicas=sync_replicas, optimizer=config.OptimizerConfig(base_lr=0.4, lr_scaling="sqrt"))
    assert train_config.peak_lr == pytest.approx(expected)


# --- Per-model defaults from the reference recipes, flags overriding them -----------------------

def _job_optimizer(train_flags, *argv):
    values = train_flags(*argv)
    return _flags.optimizer_config(values["train"], values["model"]["model"])


def test_resnet50_defaults_are_the_official_resnet_schedule(train_flags):
    # 90 "epochs" of 100 steps at 256 images per update: warmup 5 epochs to 0.1,
    # then x0.1 at epochs 30, 60 and 80 (tensorflow/models official ResNet).
    optimizer = _job_optimizer(train_flags, "--model=resnet50", "--train_steps=9000", "--batch_size=256")
    assert (optimizer.base_lr, optimizer.warmup_steps, optimizer.decay) == (0.1, 500, "step")
    assert (optimizer.weight_decay, optimizer.label_smoothing, optimizer.momentum) == (1e-4, 0.0, 0.9)
    train_config = config.TrainConfig(model=config.ModelConfig("resnet50", 1000, 224), optimizer=optimizer,
                                      batch_size=256, train_steps=9000)
    # piecewise_constant, as in the reference: the boundary step keeps the old value.
    values = _lr_at(train_config, [0, 250, 500, 3000, 3001, 6000, 6001, 8000, 8001, 8999])
    expected = [0.0, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-9)


def test_alexnet_defaults_are_torchvisions(train_flags):
    optimizer = _job_optimizer(train_flags, "--model=alexnet", "--train_steps=900")
    assert (optimizer.base_lr, optimizer.warmup_steps, optimizer.decay) == (0.01, 0, "step")
    np.testing.assert_allclose(optimizer.decay_boundaries, [1 / 3, 2 / 3])


def test_flags_override_the_recipe(train_flags):
    optimizer = _job_optimizer(
        train_flags, "--model=resnet50", "--train_steps=900", "--base_lr=0.2", "--warmup_steps=0",
        "--lr_decay=cosine", "--label_smoothing=0.1", "--weight_decay=5e-5", "--lr_decay_boundaries=30/90,0.75")
    assert (optimizer.base_lr, optimizer.warmup_steps, optimizer.decay) == (0.2, 0, "cosine")
    assert (optimizer.label_smoothing, optimizer.weight_decay) == (0.1, 5e-5)
    np.testing.assert_allclose(optimizer.decay_boundaries, [1 / 3, 0.75])


def test_bad_decay_boundaries_are_one_line(train_flags):
    with pytest.raises(config.ConfigError, match="--lr_decay_boundaries must be comma-separated fractions"):
        _job_optimizer(train_flags, "--model=resnet50", "--lr_decay_boundaries=30/0")


# --- The evaluation (and serving) crop of each model family ----------------------------------

def _bilinear(image, height, width):
    """Bilinear resize with half-pixel centres (tf.image.resize's convention), in numpy."""
    def axis(out_size, in_size):
        position = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        lower = np.floor(position)
        fraction = position - lower
        return (np.clip(lower, 0, in_size - 1).astype(int), np.clip(np.ceil(position), 0, in_size - 1).astype(int),
                fraction)

    top, bottom, fy = axis(height, image.shape[0])
    left, right, fx = axis(width, image.shape[1])
    image = image.astype(np.float64)
    rows = image[top] + (image[bottom] - image[top]) * fy[:, None, None]
    return rows[:, left] + (rows[:, right] - rows[:, left]) * fx[None, :, None]


def _reference_resnet_crop(pixels, size=224, resize_min=256):
    """tensorflow/models' ResNet eval: shorter side to 256 keeping the aspect, then the central 224."""
    height, width = pixels.shape[:2]
    scale = resize_min / min(height, width)
    new_height, new_width = int(round(height * scale)), int(round(width * scale))
    resized = _bilinear(pixels, new_height, new_width)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return resized[top:top + size, left:left + size]


def _disk_image(height=300, width=400, radius=100):
    rows, cols = np.mgrid[:height, :width]
    inside = (rows - height / 2) ** 2 + (cols - width / 2) ** 2 < radius ** 2
    pixels = np.full([height, width, 3], 255, np.uint8)
    pixels[inside] = 0
    return pixels


def _rows_and_columns_spanned(mask):
    return int(mask.any(axis=1).sum()), int(mask.any(axis=0).sum())


@pytest.mark.parametrize("height, width", [(300, 400), (400, 300), (375, 500), (256, 256)])
def test_resnet_eval_crop_is_the_reference_computation(height, width):
    pixels = _disk_image(height, width, radius=min(height, width) // 3)
    encoded = tf.io.encode_jpeg(pixels, quality=100)
    decoded = tf.io.decode_jpeg(encoded, channels=3).numpy()  # The JPEG's own pixels.
    image = inputs.eval_image_from_bytes(encoded, 224, "resize_shorter_side").numpy()
    assert image.shape == (224, 224, 3)
    np.testing.assert_allclose(image, _reference_resnet_crop(decoded), atol=0.02)


def test_resnet_eval_crop_of_real_imagenet_jpegs(imagenet_samples_dir):
    paths = [p for p in sorted(imagenet_samples_dir.glob("*.JPEG"))][:8]
    shapes = set()
    for path in paths:
        encoded = path.read_bytes()
        decoded = tf.io.decode_jpeg(encoded, channels=3).numpy()
        shapes.add(decoded.shape[0] != decoded.shape[1])
        image = inputs.eval_image_from_bytes(encoded, 224, "resize_shorter_side").numpy()
        np.testing.assert_allclose(image, _reference_resnet_crop(decoded), atol=0.02, err_msg=str(path))
    assert True in shapes, "the samples must include non-square images"


def test_resnet_crop_keeps_a_disk_round_and_inception_crop_stretches_it():
    encoded = tf.io.encode_jpeg(_disk_image(300, 400, radius=100), quality=100)
    round_disk = inputs.eval_image_from_bytes(encoded, 224, "resize_shorter_side").numpy()[..., 0] < 128
    rows, columns = _rows_and_columns_spanned(round_disk)
    # A diameter of 200 px at 256/300: about 171 px both ways.
    assert abs(rows - columns) <= 2 and abs(rows - 200 * 256 / 300) <= 2
    stretched = inputs.eval_image_from_bytes(encoded, 224, "central_fraction").numpy()[..., 0] < 128
    rows, columns = _rows_and_columns_spanned(stretched)
    assert rows / columns == pytest.approx(4 / 3, rel=0.03), "a 4:3 image squashed into a square"


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_input_fn_and_export_use_the_models_crop(name):
    data = _flags.dataset_config(
        {"dataset": "d", "data_dir": None, "use_synthetic_data": False, "use_bbox_crop": False,
         "train_split": "train", "eval_split": "validation", "shuffle_buffer": 1, "seed": None,
         "min_crop_area": 0.08}, 224, model_name=name)
    assert data.eval_crop == models.eval_crop(name)


# --- Input sharding: disjoint shares whatever the seed ----------------------------------------

class BwtfTestTwoFileImages(tfds.core.GeneratorBasedBuilder):
    """60 tiny JPEGs with labels, written to 2 files (fewer files than the workers below)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=2),
            "file_name": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index in range(60):
            yield index, {"image": np.full([8, 8, 3], index * 4, np.uint8), "label": index % 2,
                          "file_name": f"example-{index}"}


@pytest.fixture(scope="module")
def two_file_dataset(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("two-files")
    BwtfTestTwoFileImages(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=2))
    return config.DatasetConfig(name="bwtf_test_two_file_images", data_dir=str(data_dir), image_size=8)


@pytest.mark.parametrize("workers", [3, 4])
def test_fewer_files_than_workers_gives_disjoint_shares_without_a_seed(two_file_dataset, workers):
    assert two_file_dataset.seed is None
    assert inputs.dataset_metadata(two_file_dataset, splits=["train"]).num_files["train"] == 2
    shares = []
    for worker in range(workers):
        context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker)
        names = [bytes(e["file_name"].numpy()) for e in inputs._raw_examples(two_file_dataset, True, context)]
        assert len(names) == len(set(names))
        shares.append(set(names))
    seen = [name for share in shares for name in share]
    assert len(seen) == len(set(seen)) == 60, "every example exactly once per epoch, across the workers"


@pytest.mark.parametrize("workers", [1, 2])
def test_enough_files_are_shared_out_by_file(two_file_dataset, workers):
    shares = []
    for worker in range(workers):
        context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker)
        shares.append({bytes(e["file_name"].numpy()) for e in inputs._raw_examples(two_file_dataset, True, context)})
    assert sum(len(s) for s in shares) == len(set().union(*shares)) == 60


# --- Evaluation metrics: per example, float32, the same number everywhere ---------------------

def _metric_values(logits, labels, batch_size):
    """The EVAL metrics of model_fn over ``logits`` fed in batches of ``batch_size``."""
    with tf.Graph().as_default():
        dataset = tf.data.Dataset.from_tensor_slices((logits, labels)).batch(batch_size)
        batch_logits, batch_labels = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        metrics = model_fn._eval_metrics(batch_logits, batch_labels, model_fn._predictions(batch_logits))
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.local_variables_initializer())
            try:
                while True:
                    session.run([update for _, update in metrics.values()])
            except tf.errors.OutOfRangeError:
                pass
            return {name: float(session.run(value)) for name, (value, _) in metrics.items()}


def test_a_tie_for_the_top_score_is_not_a_hit():
    # in_top_k would count both rows as hits: the label ties the top score.
    logits = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.0, 0.0, 3.0]], np.float32)
    labels = np.array([1, 2, 2])
    values = _metric_values(logits, labels, 3)
    assert values["precision_at_1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 10])
def test_cross_entropy_is_the_per_example_mean_whatever_the_batch(batch_size):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=[10, 5]).astype(np.float32) * 3
    labels = rng.integers(0, 5, size=10)
    shifted = logits - logits.max(axis=1, keepdims=True)
    per_example = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(10), labels]
    values = _metric_values(logits, labels, batch_size)
    assert values["cross_entropy"] == pytest.approx(per_example.mean(), rel=1e-5)
    assert values["precision_at_1"] == pytest.approx(np.mean(logits.argmax(axis=1) == labels))


@pytest.mark.parametrize("mode", [spec.ModeKeys.EVAL, spec.ModeKeys.PREDICT])
def test_evaluation_and_serving_compute_in_float32_under_bf16(mode, tmp_path):
    train_config = config.TrainConfig(model=config.ModelConfig("small_cnn", 10, 32), precision="bf16",
                                      model_dir=str(tmp_path))
    with tf.Graph().as_default() as graph:
        images = tf.random.uniform([4, 32, 32, 3], maxval=255.0)
        labels = None if mode == spec.ModeKeys.PREDICT else tf.constant([1, 2, 3, 4], tf.int64)
        model_fn.model_fn(images, labels, mode, train_config)
        low_precision = [op.name for op in graph.get_operations()
                         if any(out.dtype in (tf.bfloat16, tf.float16) for out in op.outputs)]
    assert low_precision == []


def _evaluation_line(log):
    match = re.search(r"evaluation at step (\d+): precision@1 ([\d.]+) precision@5 ([\d.]+) loss ([\d.]+)", log)
    assert match, log[-3000:]
    return int(match.group(1)), float(match.group(2)), float(match.group(4))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_eval_evaluator_and_bwtf_eval_agree_under_bf16(digits_flags, tmp_path):
    """The same checkpoint, evaluated by the trainer (bf16), the evaluator task's code and bwtf-eval
    at two batch sizes, gives one precision@1 and one loss."""
    model_dir = tmp_path / "run"
    code, log = run_train([*digits_flags, f"--model_dir={model_dir}", "--train_steps=60", "--precision=bf16",
                           "--distribution=none", "--label_smoothing=0.1", "--weight_decay=1e-3"], tmp_path)
    assert code == 0, log[-3000:]
    assert "small_cnn: 61,338 trainable parameters" in log
    step, precision, loss = _evaluation_line(log)
    assert step == 60
    given = dict(flag.split("=", 1) for flag in digits_flags if "=" in flag)
    model_flags = [f"{name}={given[name]}" for name in ("--model", "--dataset", "--data_dir", "--image_size")]
    results = []
    for batch_size in (7, 100):
        result = subprocess.run([sys.executable, "-m", "bwtf.estimator.evaluate", *model_flags,
                                 f"--model_dir={model_dir}", f"--batch_size={batch_size}"],
                                capture_output=True, text=True, timeout=300, env=_env())
        assert result.returncode == 0, result.stderr[-3000:]
        results.append(json.loads(result.stdout))
    # The evaluator task runs runner.evaluate_once's code with the job's (bf16) TrainConfig.
    data = config.DatasetConfig(name=given["--dataset"], data_dir=given["--data_dir"], image_size=32)
    job = runner.EvalJob(str(model_dir), data, config.TrainConfig(
        model=config.ModelConfig("small_cnn", 10, 32), precision="bf16", model_dir=str(model_dir)), batch_size=64)
    results.append(runner.evaluate_once(job))
    for result in results:
        assert result["global_step"] == 60 and result["num_examples"] == 355
        assert result["precision_at_1"] == pytest.approx(precision, abs=1e-4)
        assert result["loss"] == pytest.approx(loss, abs=1e-4)


@pytest.mark.parametrize("flag", ["--precision=bf16", "--label_smoothing=0.1", "--weight_decay=0.001"])
def test_bwtf_eval_refuses_flags_it_would_ignore(flag, tmp_path):
    # Evaluation always computes in float32 and reports the plain per-example
    # cross-entropy: bwtf-eval does not define training-only flags, so a user who
    # passes one learns at once that it would change nothing.
    result = subprocess.run([sys.executable, "-m", "bwtf.estimator.evaluate", f"--model_dir={tmp_path}", flag],
                            capture_output=True, text=True, timeout=120, env=_env())
    assert result.returncode == 2
    name = flag[2:].split("=")[0]
    lines = [line for line in result.stderr.splitlines() if line.startswith("bwtf-eval")]
    assert lines == [f"bwtf-eval: error: Unknown command line flag '{name}' (see bwtf-eval --help)"]
    assert "Traceback" not in result.stderr


def test_bwtf_export_refuses_data_flags_it_would_ignore(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bwtf.estimator.export", f"--model_dir={tmp_path}",
                             f"--export_dir={tmp_path / 'export'}", "--min_crop_area=0.5"],
                            capture_output=True, text=True, timeout=120, env=_env())
    assert result.returncode == 2
    assert "bwtf-export: error: Unknown command line flag 'min_crop_area'" in result.stderr
    assert not (tmp_path / "export").exists()


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env

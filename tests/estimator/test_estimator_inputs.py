"""Input pipeline: real JPEGs, the digits archive, sharding, synthetic data, bad datasets."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bwtf.estimator import config, inputs
from bwtf.estimator.runner import spec

_TRAIN, _EVAL = spec.ModeKeys.TRAIN, spec.ModeKeys.EVAL


def _digits_config(data_dir, name, **overrides):
    return config.DatasetConfig(name=name, data_dir=data_dir, image_size=32, shuffle_buffer=100, seed=3,
                                **overrides)


@pytest.mark.parametrize("size", [64, 224])
def test_real_jpegs_preprocess_to_normalised_square_images(imagenet_samples_dir, size):
    paths = sorted(imagenet_samples_dir.glob("*.JPEG"))[:6]
    for path in paths:
        encoded = tf.constant(path.read_bytes())
        train = inputs.train_image_from_bytes(encoded, size).numpy()
        for crop in ("resize_shorter_side", "central_fraction"):
            evaluated = inputs.eval_image_from_bytes(encoded, size, crop).numpy()
            assert evaluated.shape == (size, size, 3) and evaluated.std() > 1.0
        for image in (train, evaluated):
            assert image.shape == (size, size, 3) and image.dtype == np.float32
            assert image.min() >= 0.0 and image.max() <= 255.0 and image.std() > 1.0


@pytest.mark.parametrize("encode, jpeg", [(tf.io.encode_jpeg, True), (tf.io.encode_png, False)])
def test_grayscale_and_png_images_come_out_with_three_channels(encode, jpeg):
    gray = tf.cast(tf.reshape(tf.range(40 * 30) % 255, [40, 30, 1]), tf.uint8)
    encoded = encode(gray)
    for crop in ("resize_shorter_side", "central_fraction"):
        assert inputs.eval_image_from_bytes(encoded, 16, crop, jpeg=jpeg).shape == (16, 16, 3)
    assert inputs.train_image_from_bytes(encoded, 16, jpeg=jpeg).shape == (16, 16, 3)


def test_bbox_crop_always_keeps_part_of_the_box():
    # A white box in the top-left corner of a black image: a crop that must
    # cover 10% of the box always contains white.
    pixels = np.zeros([100, 100, 3], np.uint8)
    pixels[:30, :30] = 255
    encoded = tf.io.encode_jpeg(pixels, quality=100)
    box = tf.constant([[0.0, 0.0, 0.3, 0.3]])
    with_box = [inputs.train_image_from_bytes(encoded, 32, box).numpy().max() for _ in range(30)]
    black = inputs.train_image_from_bytes(tf.io.encode_jpeg(np.zeros_like(pixels)), 32).numpy().max()
    assert black < 1.0 and min(with_box) > 100.0


def test_synthetic_input_matches_the_real_shapes():
    data = config.DatasetConfig(image_size=32, num_classes=10, use_synthetic_data=True)
    images, labels = next(iter(inputs.synthetic_input_fn(data, _TRAIN, 4)))
    assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32
    assert labels.shape == (4,) and labels.dtype == tf.int64 and int(tf.reduce_max(labels)) < 10
    assert sum(1 for _ in inputs.synthetic_input_fn(data, _EVAL, 4)) == 100


def test_digits_train_and_eval_batches(digits_data_dir, digits_dataset_name):
    data = _digits_config(digits_data_dir, digits_dataset_name)
    metadata = inputs.dataset_metadata(data)
    assert metadata.num_classes == 10 and metadata.has_bboxes
    assert sum(metadata.split_sizes.values()) == 1797, "the digits archive has 1797 scans"

    images, labels = next(iter(inputs.input_fn(data, _TRAIN, 8)))
    assert images.shape == (8, 32, 32, 3) and labels.shape == (8,)
    bbox_data = _digits_config(digits_data_dir, digits_dataset_name, use_bbox_crop=True)
    assert next(iter(inputs.input_fn(bbox_data, _TRAIN, 8)))[0].shape == (8, 32, 32, 3)
    seen = sum(int(batch[1].shape[0]) for batch in inputs.input_fn(data, _EVAL, 64))
    assert seen == metadata.split_sizes["validation"], "evaluation must read the whole split exactly once"


@pytest.mark.parametrize("mode", [_TRAIN, _EVAL])
@pytest.mark.parametrize("synthetic", [False, True])
def test_pipelines_run_without_the_autotune_thread(digits_data_dir, digits_dataset_name, mode, synthetic):
    """A cluster's session close waits out the autotuner's sleep (up to 60 s) when it destroys the
    iterator: every chief and worker ended 10-57 s late, and a walltime kill could land there."""
    if synthetic:
        dataset = inputs.synthetic_input_fn(config.DatasetConfig(image_size=32, num_classes=10), mode, 4)
    else:
        dataset = inputs.input_fn(_digits_config(digits_data_dir, digits_dataset_name), mode, 4)
    assert dataset.options().autotune.enabled is False
    assert next(iter(dataset))[0].shape == (4, 32, 32, 3)


def test_the_decode_runs_one_call_per_cpu_the_task_may_use():
    """Without the autotuner, the decode map's parallelism follows the affinity mask (Slurm's
    --cpus-per-task, taskset), not a fixed 16 that would starve a many-core node."""
    script = ("import os; os.sched_setaffinity(0, {0}); from bwtf.estimator import inputs; "
              "print(inputs._decode_parallelism())")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.split()[-1] == "1", run.stderr[-2000:]
    assert inputs._decode_parallelism() == len(os.sched_getaffinity(0))  # pylint: disable=protected-access


def test_each_worker_reads_its_own_share(digits_data_dir, digits_dataset_name):
    data = _digits_config(digits_data_dir, digits_dataset_name)
    shares = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
        names = {bytes(e["file_name"].numpy()) for e in inputs._raw_examples(data, True, context)}
        shares.append(names)
    assert not shares[0] & shares[1]
    assert len(shares[0] | shares[1]) == inputs.dataset_metadata(data).split_sizes["train"]


class BwtfTestImagesWithoutLabels(tfds.core.GeneratorBasedBuilder):
    """Two images and no label: not an image-classification dataset."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(8, 8, 3))}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index in range(2):
            yield index, {"image": np.full([8, 8, 3], index, np.uint8)}


def test_dataset_without_labels_is_refused(tmp_path):
    BwtfTestImagesWithoutLabels(data_dir=str(tmp_path)).download_and_prepare()
    data = config.DatasetConfig(name="bwtf_test_images_without_labels", data_dir=str(tmp_path))
    with pytest.raises(inputs.DatasetError, match="lacks the feature.*label"):
        inputs.dataset_metadata(data)


@pytest.mark.parametrize("overrides, message", [
    (dict(data_dir="EMPTY"), "does not contain the dataset"),
    (dict(name="no_such_dataset_anywhere"), "does not contain the dataset 'no_such_dataset_anywhere'"),
    (dict(eval_split="test"), "has no split"),
])
def test_bad_dataset_choices(digits_data_dir, digits_dataset_name, tmp_path, overrides, message):
    if overrides.get("data_dir") == "EMPTY":
        overrides["data_dir"] = str(tmp_path)
    fields = dict(name=digits_dataset_name, data_dir=digits_data_dir, image_size=32)
    fields.update(overrides)
    with pytest.raises(inputs.DatasetError, match=message):
        inputs.dataset_metadata(config.DatasetConfig(**fields))

"""Input functions: a TFDS image-classification dataset, or synthetic batches.

    input_fn(dataset_config, mode, batch_size, input_context=None) -> tf.data.Dataset
    synthetic_input_fn(dataset_config, mode, batch_size, input_context=None)
    train_image_from_bytes(encoded_image, image_size, bboxes=None, ...) -> float32 [size, size, 3]
    eval_image_from_bytes(encoded_image, image_size, crop) -> float32 [size, size, 3]
    dataset_metadata(dataset_config) -> DatasetMetadata   (validates the dataset)

Both input functions yield ``(images, labels)``: float32 [batch, size, size, 3]
RGB pixel values in [0, 255], and int64 [batch]. Normalisation by the channel
mean and deviation is the model's first layer (``model_fn.build_logits``):
done on the whole batch there, it costs a third less CPU per image than here.
``batch_size`` is per worker. ``input_context`` (a ``tf.distribute.InputContext``)
says which of the workers' input pipelines this is: training reads only its
share of the dataset's files (``tfds.ReadConfig(input_context=...)``), or of
its examples when the split has fewer files than there are workers (then every
worker reads the files in the same fixed order and keeps every N-th example,
so the shares are disjoint whatever ``seed`` is; the shuffle buffer still
shuffles each worker's share).

Any TFDS dataset with an ``image`` and a ``label`` (ClassLabel) feature works;
``imagenet_archive`` from ``bwtf.data`` is the intended one. Images are read
still encoded. Training decodes only a random crop (``decode_and_crop_jpeg``
with ``sample_distorted_bounding_box``; with ``use_bbox_crop`` the crop must
cover part of the dataset's ``bboxes``, as in Inception's preprocessing), then
flips and resizes, for every model. Evaluation (and the exported model's
serving) crops the way the model's reference does (``crop``, the model's
``bwtf.estimator.models.eval_crop``): "resize_shorter_side" is the ResNet
protocol of tensorflow/models' ``imagenet_preprocessing`` and torchvision's
references (shorter side resized to 256/224 of ``image_size`` keeping the
aspect ratio, e.g. 256 for 224, then the central ``image_size`` square);
"central_fraction" is Inception's (the central 87.5 % of each side, resized to
the square, which stretches a non-square image).
Grayscale images come out with three channels; datasets that store PNG
(TFDS's default image encoding) take a full decode.

Both pipelines run without tf.data's autotuning model (``options.autotune.
enabled = False``): in a cluster, closing a training session destroys its
iterator, and the destructor waits for the autotuner's thread, which sleeps
out its optimization period (growing to 60 s) first. Every chief and worker
took 10-57 s to end after its final step (measured on TensorFlow 2.15 and
2.21); a scheduler's kill at the walltime could land in that wait. Without the
model an AUTOTUNE parallelism would stay at min(16, cores), so the decode map
asks for one call per CPU this process may run on (what the autotuner climbs
to for a CPU-bound decode; Slurm's --cpus-per-task sets that number); the
files' interleave keeps its AUTOTUNE default (its cycle is 16 files anyway)
and prefetch its own buffer sizing.

Deliberately left out: colour distortion and other augmentations beyond crop
and flip, and caching to memory (an ImageNet split does not fit).
"""
import dataclasses
import os
from typing import Tuple

import tensorflow as tf

import bwtf
from bwtf.estimator.runner import spec

_AUTOTUNE = tf.data.AUTOTUNE
_EVAL_CENTRAL_FRACTION = 0.875
_RESIZE_SHORTER_SIDE_RATIO = 256 / 224
_ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
_REQUIRED_FEATURES = ("image", "label")


class DatasetError(bwtf.UserError, ValueError):
    """The dataset cannot be read as an image-classification dataset."""


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
    """What the model needs to know about the dataset."""

    num_classes: int
    class_names: Tuple[str, ...]
    split_sizes: dict
    has_bboxes: bool
    num_files: dict


def _configs_hint(dataset_config):
    from bwtf.data import build as data_build  # the configs a build wrote, e.g. present-per_class_100

    return data_build.configs_hint(dataset_config.data_dir, dataset_config.name)


def _builder(dataset_config):
    import tensorflow_datasets as tfds  # Seconds to import; only real data needs it.

    import bwtf.data  # noqa: F401  Registers the imagenet_archive builder with TFDS.

    # Checked here because TFDS, not finding the data, asks GCS for the
    # dataset's metadata: seconds of DNS timeouts on a compute node.
    expected = os.path.join(dataset_config.data_dir or "", dataset_config.name.split(":")[0])
    if dataset_config.data_dir and not tf.io.gfile.isdir(expected):
        raise DatasetError(
            f"data_dir {dataset_config.data_dir} does not contain the dataset {dataset_config.name!r} "
            f"(looked for {expected}). Build it first (python -m bwtf.data.build) or point --data_dir "
            "at the folder that holds it." + _configs_hint(dataset_config))
    try:
        return tfds.builder(dataset_config.name, data_dir=dataset_config.data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise DatasetError(
            f"no TFDS dataset named {dataset_config.name!r} in data_dir {dataset_config.data_dir}: "
            f"{str(error).splitlines()[0]}. Build it first (python -m bwtf.data.build) or fix --dataset."
        ) from None


def dataset_metadata(dataset_config, splits=None, split_flag="--train_split/--eval_split"):
    """Checks that the dataset is built and usable; returns its metadata.

    Raises DatasetError naming the data_dir, the missing split or feature;
    ``split_flag`` is the caller's flag that chooses the split.
    """
    builder = _builder(dataset_config)
    if not tf.io.gfile.exists(builder.data_dir) or not builder.info.splits:
        raise DatasetError(
            f"data_dir {dataset_config.data_dir} does not contain the dataset "
            f"{dataset_config.name!r} (looked for {builder.data_dir}). Build it first "
            "(python -m bwtf.data.build) or point --data_dir at the folder that holds it."
            + _configs_hint(dataset_config))
    features = builder.info.features
    missing = [name for name in _REQUIRED_FEATURES if name not in features]
    if missing:
        raise DatasetError(
            f"dataset {dataset_config.name!r} lacks the feature(s) {', '.join(missing)}; an image "
            f"classification dataset needs {' and '.join(_REQUIRED_FEATURES)}. Found: {', '.join(features)}.")
    wanted = splits or (dataset_config.train_split, dataset_config.eval_split)
    absent = [s for s in wanted if s not in builder.info.splits]
    if absent:
        raise DatasetError(
            f"dataset {dataset_config.name!r} in {dataset_config.data_dir} has no split(s) "
            f"{', '.join(absent)}; it has {', '.join(builder.info.splits)}. Choose one with {split_flag}.")
    if dataset_config.use_bbox_crop and "bboxes" not in features:
        raise DatasetError(
            f"--use_bbox_crop needs a 'bboxes' feature, but dataset {dataset_config.name!r} has none; "
            "drop --use_bbox_crop.")
    label = features["label"]
    return DatasetMetadata(
        num_classes=label.num_classes,
        class_names=tuple(label.names),
        split_sizes={name: info.num_examples for name, info in builder.info.splits.items()},
        has_bboxes="bboxes" in features,
        num_files={name: info.num_shards for name, info in builder.info.splits.items()},
    )


def _decode_window(encoded, window, jpeg):
    """Decodes only ``window`` [y, x, h, w] of a JPEG; other formats decode fully first.

    The format is known per dataset, not per image: a per-image ``tf.cond``
    costs more than the fused crop saves (measured: 3x slower on one core).
    """
    if jpeg:
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])


def _image_shape(encoded, jpeg):
    if jpeg:
        return tf.image.extract_jpeg_shape(encoded)
    return tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))


def _resize(image, image_size):
    image = tf.image.resize(image, [image_size, image_size], method=tf.image.ResizeMethod.BILINEAR)
    image.set_shape([image_size, image_size, 3])
    return image


def train_image_from_bytes(encoded_image, image_size, bboxes=None, min_crop_area=0.08, jpeg=True):
    """A random crop (covering part of ``bboxes`` [N, 4] when given), flipped and resized.

    ``jpeg=False`` accepts any format ``tf.io.decode_image`` reads (PNG, BMP, GIF).
    """
    if bboxes is None:
        bboxes = tf.zeros([0, 4], tf.float32)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        _image_shape(encoded_image, jpeg),
        bounding_boxes=tf.reshape(tf.cast(bboxes, tf.float32), [1, -1, 4]),
        min_object_covered=0.1,
        aspect_ratio_range=_ASPECT_RATIO_RANGE,
        area_range=(min_crop_area, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = _decode_window(encoded_image, window, jpeg)
    image = tf.image.random_flip_left_right(image)
    return _resize(image, image_size)


def eval_image_from_bytes(encoded_image, image_size, crop, jpeg=True):
    """The evaluation (and serving) preprocessing of one encoded image.

    ``crop`` is "resize_shorter_side" or "central_fraction" (module docstring);
    returns float32 [image_size, image_size, 3] pixel values in [0, 255].
    ``jpeg=False`` accepts any format ``tf.io.decode_image`` reads.
    """
    if crop == "resize_shorter_side":
        return _resize_shorter_side_and_center(encoded_image, image_size, jpeg)
    if crop != "central_fraction":
        raise ValueError(f"crop must be resize_shorter_side or central_fraction; found {crop!r}")
    return _central_fraction(encoded_image, image_size, jpeg)


def _resize_shorter_side_and_center(encoded_image, image_size, jpeg):
    """Shorter side to round(image_size * 256/224), aspect kept; then the central square."""
    if jpeg:
        image = tf.io.decode_jpeg(encoded_image, channels=3)
    else:
        image = tf.io.decode_image(encoded_image, channels=3, expand_animations=False)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = round(image_size * _RESIZE_SHORTER_SIDE_RATIO) / tf.minimum(height, width)
    # Rounded, not truncated: 500x375 gives 341x256, never 340x255.
    new_height = tf.cast(tf.round(height * scale), tf.int32)
    new_width = tf.cast(tf.round(width * scale), tf.int32)
    image = tf.image.resize(image, [new_height, new_width], method=tf.image.ResizeMethod.BILINEAR)
    top, left = (new_height - image_size) // 2, (new_width - image_size) // 2
    image = tf.slice(image, [top, left, 0], [image_size, image_size, 3])
    image.set_shape([image_size, image_size, 3])
    return image


def _central_fraction(encoded_image, image_size, jpeg):
    """The central 87.5 % of each side, decoded alone and resized to the square."""
    shape = _image_shape(encoded_image, jpeg)
    height, width = shape[0], shape[1]
    crop_height = tf.cast(tf.cast(height, tf.float32) * _EVAL_CENTRAL_FRACTION, tf.int32)
    crop_width = tf.cast(tf.cast(width, tf.float32) * _EVAL_CENTRAL_FRACTION, tf.int32)
    window = tf.stack([(height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width])
    return _resize(_decode_window(encoded_image, window, jpeg), image_size)


def _read_config(input_context, dataset_config, sharded_by_file):
    import tensorflow_datasets as tfds

    return tfds.ReadConfig(
        input_context=input_context if sharded_by_file else None,
        shuffle_seed=dataset_config.seed,
        interleave_cycle_length=16,
        num_parallel_calls_for_interleave_files=_AUTOTUNE,
    )


def _stores_jpeg(builder):
    return getattr(builder.info.features["image"], "encoding_format", None) == "jpeg"


def _raw_examples(dataset_config, training, input_context):
    import tensorflow_datasets as tfds

    builder = _builder(dataset_config)
    split = dataset_config.train_split if training else dataset_config.eval_split
    pipelines = input_context.num_input_pipelines if (input_context and training) else 1
    num_files = builder.info.splits[split].num_shards
    sharded_by_file = pipelines > 1 and num_files >= pipelines
    sharded_by_example = pipelines > 1 and not sharded_by_file
    dataset = builder.as_dataset(
        split=split,
        # Sharding by example needs every worker to see the examples in the
        # same order: a file order shuffled per worker made the shares overlap.
        shuffle_files=training and not sharded_by_example,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=_read_config(input_context, dataset_config, sharded_by_file),
    )
    if sharded_by_example:
        # Too few files to give each worker its own: every worker reads all of
        # them in one fixed order and keeps every N-th example (see the module doc).
        options = tf.data.Options()
        options.deterministic = True
        dataset = dataset.with_options(options).shard(pipelines, input_context.input_pipeline_id)
    return dataset


def input_fn(dataset_config, mode, batch_size, input_context=None):
    """Batches of (images, labels) from the TFDS dataset; see the module docstring."""
    training = mode == spec.ModeKeys.TRAIN
    dataset = _raw_examples(dataset_config, training, input_context)
    jpeg = _stores_jpeg(_builder(dataset_config))
    size = dataset_config.image_size
    use_bboxes = dataset_config.use_bbox_crop

    def preprocess(example):
        if training:
            bboxes = example["bboxes"] if use_bboxes else None
            image = train_image_from_bytes(example["image"], size, bboxes, dataset_config.min_crop_area, jpeg)
        else:
            image = eval_image_from_bytes(example["image"], size, dataset_config.eval_crop, jpeg)
        return image, tf.cast(example["label"], tf.int64)

    if training:
        dataset = dataset.shuffle(dataset_config.shuffle_buffer, seed=dataset_config.seed).repeat()
    dataset = dataset.map(preprocess, num_parallel_calls=_decode_parallelism(), deterministic=not training)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    return _without_autotune_model(dataset.prefetch(_AUTOTUNE))


def _decode_parallelism():
    """The CPUs this process may run on (its affinity mask, as Slurm and taskset set it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _without_autotune_model(dataset):
    """``dataset`` without tf.data's autotuning thread (see the module docstring)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def synthetic_input_fn(dataset_config, mode, batch_size, input_context=None):
    """Endless constant random batches with ``input_fn``'s shapes and types.

    The batch is generated once and repeated, so the pipeline costs nothing and
    a run measures the model alone. EVAL yields 100 batches then ends.
    """
    del input_context  # Every worker gets the same kind of data.
    size = dataset_config.image_size
    images = tf.random.stateless_uniform([batch_size, size, size, 3], seed=[1, 2], maxval=255.0)
    labels = tf.random.stateless_uniform(
        [batch_size], seed=[3, 4], maxval=dataset_config.num_classes, dtype=tf.int64)
    dataset = tf.data.Dataset.from_tensors((images, labels)).cache()
    dataset = dataset.repeat() if mode == spec.ModeKeys.TRAIN else dataset.repeat(100)
    return _without_autotune_model(dataset.prefetch(_AUTOTUNE))


def make_input_fn(dataset_config, mode, batch_size, num_input_pipelines=1, input_pipeline_id=0):
    """An Estimator-ready input_fn for this worker (real or synthetic data).

    Under a distribution strategy the Estimator passes its own ``input_context``;
    otherwise (ps training) the one built from ``num_input_pipelines`` and
    ``input_pipeline_id`` is used.
    """
    source = synthetic_input_fn if dataset_config.use_synthetic_data else input_fn
    default_context = tf.distribute.InputContext(
        num_input_pipelines=num_input_pipelines, input_pipeline_id=input_pipeline_id)

    def estimator_input_fn(input_context=None):
        return source(dataset_config, mode, batch_size, input_context or default_context)

    return estimator_input_fn

"""absl flag definitions shared by train, evaluate and export.

Each ``define_*_flags()`` defines one group of flags on ``flag_values`` and
returns a frozen dataclass of their FlagHolders; the program's main module
keeps it in a module constant (``_DATA = _flags.define_data_flags()``) and
turns it into configuration with ``_DATA.values()`` inside ``main``. No flag
is read anywhere else, and no value is changed after parsing.

The flag names are an interface (job scripts and ``bwtf-launch -- <flags>``
rely on them): --model --data_dir --dataset --model_dir --batch_size
--train_steps --image_size --use_synthetic_data --save_checkpoints_steps
--save_checkpoints_secs --keep_checkpoints --distribution --precision --xla.
Range checks use absl's bounds and enums, so a bad value stops the program
with absl's one-line message before anything starts.
"""
import dataclasses

from absl import flags

from bwtf.estimator import config, models
from bwtf.estimator.cluster import roles as cluster


@dataclasses.dataclass(frozen=True)
class FlagGroup:
    """FlagHolders by name; ``values()`` reads them (call it in ``main`` only)."""

    holders: dict

    def values(self):
        return {name: holder.value for name, holder in self.holders.items()}


def _holders(**holders):
    return FlagGroup(holders)


def define_model_flags(flag_values=flags.FLAGS):
    return _holders(
        model=flags.DEFINE_enum("model", "resnet50", models.MODEL_NAMES, "Network to train.",
                                flag_values=flag_values),
        image_size=flags.DEFINE_integer(
            "image_size", 0, "Input side length in pixels; 0 = the model's native size.",
            lower_bound=0, flag_values=flag_values),
        num_classes=flags.DEFINE_integer(
            "num_classes", 0, "Classes; 0 = read from the dataset (1000 with synthetic data).",
            lower_bound=0, flag_values=flag_values),
    )


def define_data_flags(flag_values=flags.FLAGS):
    return _holders(
        data_dir=flags.DEFINE_string("data_dir", None, "TFDS data_dir holding --dataset.",
                                     flag_values=flag_values),
        dataset=flags.DEFINE_string("dataset", "imagenet_archive", "TFDS dataset name[/config].",
                                    flag_values=flag_values),
        use_synthetic_data=flags.DEFINE_bool(
            "use_synthetic_data", False, "Train on constant random batches (no data read).",
            flag_values=flag_values),
        use_bbox_crop=flags.DEFINE_bool(
            "use_bbox_crop", False, "Training crops must cover part of the dataset's bboxes.",
            flag_values=flag_values),
        train_split=flags.DEFINE_string("train_split", "train", "Split to train on.", flag_values=flag_values),
        eval_split=flags.DEFINE_string("eval_split", "validation", "Split to evaluate on.",
                                       flag_values=flag_values),
        min_crop_area=flags.DEFINE_float(
            "min_crop_area", 0.08, "Smallest image fraction a training crop keeps.",
            lower_bound=0.01, upper_bound=1.0, flag_values=flag_values),
        shuffle_buffer=flags.DEFINE_integer("shuffle_buffer", 10000, "Examples in the shuffle buffer.",
                                            lower_bound=1, flag_values=flag_values),
        seed=flags.DEFINE_integer("seed", None, "Shuffle seed (None: random).", flag_values=flag_values),
    )


def define_train_flags(flag_values=flags.FLAGS):
    f = flag_values
    return _holders(
        model_dir=flags.DEFINE_string("model_dir", None, "Checkpoints and summaries go here.", flag_values=f),
        batch_size=flags.DEFINE_integer("batch_size", 32, "Images per step per worker.", lower_bound=1,
                                        flag_values=f),
        train_steps=flags.DEFINE_integer("train_steps", 1000, "Global steps to train.", lower_bound=1,
                                         flag_values=f),
        distribution=flags.DEFINE_enum("distribution", "ps", config.DISTRIBUTIONS,
                                       "ps: variables on ps tasks; collective: all-reduce "
                                       "(MultiWorkerMirroredStrategy); none: one process.", flag_values=f),
        sync_replicas=flags.DEFINE_bool("sync_replicas", False, "Synchronous ps updates (SyncReplicasOptimizer).",
                                        flag_values=f),
        precision=flags.DEFINE_enum("precision", "fp32", config.PRECISIONS,
                                    "Compute dtype; variables stay fp32; fp16 uses loss scaling.", flag_values=f),
        xla=flags.DEFINE_bool("xla", False, "Compile the model with XLA.", flag_values=f),
        base_lr=flags.DEFINE_float("base_lr", 0.1, "Learning rate before scaling.", lower_bound=0.0,
                                   flag_values=f),
        lr_scaling=flags.DEFINE_enum("lr_scaling", "linear", config.LR_SCALINGS,
                                     "linear: x global_batch/256; sqrt: x sqrt(workers); none.", flag_values=f),
        warmup_steps=flags.DEFINE_integer("warmup_steps", 0, "Linear LR warmup steps.", lower_bound=0,
                                          flag_values=f),
        lr_decay=flags.DEFINE_enum("lr_decay", "cosine", config.LR_DECAYS, "LR decay after warmup.",
                                   flag_values=f),
        lr_decay_boundaries=flags.DEFINE_list("lr_decay_boundaries", ["0.3", "0.6", "0.8"],
                                              "Fractions of train_steps where step decay applies.",
                                              flag_values=f),
        lr_decay_factor=flags.DEFINE_float("lr_decay_factor", 0.1, "Step decay multiplier.", flag_values=f),
        weight_decay=flags.DEFINE_float("weight_decay", 1e-4, "L2 factor (batch norm excluded).",
                                        lower_bound=0.0, flag_values=f),
        label_smoothing=flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing.", lower_bound=0.0,
                                           upper_bound=0.99, flag_values=f),
        momentum=flags.DEFINE_float("momentum", 0.9, "SGD momentum.", lower_bound=0.0, upper_bound=0.999,
                                    flag_values=f),
        nesterov=flags.DEFINE_bool("nesterov", False, "Nesterov momentum.", flag_values=f),
        eval_steps=flags.DEFINE_integer("eval_steps", 0, "Eval batches; 0 = the whole split.", lower_bound=0,
                                        flag_values=f),
        eval_throttle_secs=flags.DEFINE_integer("eval_throttle_secs", 60,
                                                "Seconds between evaluator runs.", lower_bound=1, flag_values=f),
        eval_every_steps=flags.DEFINE_integer(
            "eval_every_steps", 0, "distribution=none: evaluate every N steps (0: once at the end).",
            lower_bound=0, flag_values=f),
        log_every_steps=flags.DEFINE_integer("log_every_steps", 100, "Steps between progress lines.",
                                             lower_bound=1, flag_values=f),
    )


def define_checkpoint_flags(flag_values=flags.FLAGS):
    f = flag_values
    return _holders(
        save_checkpoints_steps=flags.DEFINE_integer("save_checkpoints_steps", None,
                                                    "Save every N global steps.", lower_bound=1, flag_values=f),
        save_checkpoints_secs=flags.DEFINE_integer("save_checkpoints_secs", None,
                                                   "Save every N seconds (default 600 when no steps given).",
                                                   lower_bound=1, flag_values=f),
        keep_checkpoints=flags.DEFINE_integer("keep_checkpoints", 5, "Newest checkpoints kept.", lower_bound=1,
                                              flag_values=f),
        ckpt_staging_dir=flags.DEFINE_string(
            "ckpt_staging_dir", None, "gs:// model_dir only: local directory where a checkpoint is staged "
            "before upload and downloaded for restore (default: the temporary directory).", flag_values=f),
    )


def define_cluster_flags(flag_values=flags.FLAGS):
    f = flag_values
    return _holders(
        source=flags.DEFINE_enum("cluster", "auto", cluster.SOURCES, "Where this task's role comes from.",
                                 flag_values=f),
        job_name=flags.DEFINE_enum("job_name", None, ["ps", "worker", "evaluator"], "Classic role flag.",
                                   flag_values=f),
        task_index=flags.DEFINE_integer("task_index", None, "Classic task index.", lower_bound=0,
                                        flag_values=f),
        ps_hosts=flags.DEFINE_list("ps_hosts", [], "Classic: comma-separated ps host:port.", flag_values=f),
        worker_hosts=flags.DEFINE_list("worker_hosts", [], "Classic: worker host:port; worker 0 is the chief.",
                                       flag_values=f),
        num_ps=flags.DEFINE_integer("num_ps", 1, "Slurm/PBS: how many tasks are ps (distribution=ps).",
                                    lower_bound=0, flag_values=f),
    )


def _decay_boundaries(text_values):
    try:
        return tuple(float(v) for v in text_values)
    except ValueError:
        raise config.ConfigError(
            f"--lr_decay_boundaries must be comma-separated fractions such as 0.3,0.6,0.8; "
            f"found {','.join(text_values)}") from None


def optimizer_config(train_values):
    """OptimizerConfig from ``define_train_flags().values()``."""
    v = train_values
    return config.OptimizerConfig(
        base_lr=v["base_lr"], lr_scaling=v["lr_scaling"], warmup_steps=v["warmup_steps"],
        decay=v["lr_decay"], decay_boundaries=_decay_boundaries(v["lr_decay_boundaries"]),
        decay_factor=v["lr_decay_factor"], weight_decay=v["weight_decay"],
        label_smoothing=v["label_smoothing"], momentum=v["momentum"], nesterov=v["nesterov"])


def dataset_config(data_values, image_size, num_classes=None):
    """DatasetConfig from ``define_data_flags().values()``."""
    v = data_values
    return config.DatasetConfig(
        name=v["dataset"], data_dir=v["data_dir"], image_size=image_size, num_classes=num_classes or None,
        use_synthetic_data=v["use_synthetic_data"], use_bbox_crop=v["use_bbox_crop"],
        train_split=v["train_split"], eval_split=v["eval_split"], shuffle_buffer=v["shuffle_buffer"],
        seed=v["seed"], min_crop_area=v["min_crop_area"])


def image_size(model_values):
    return model_values["image_size"] or models.default_image_size(model_values["model"])

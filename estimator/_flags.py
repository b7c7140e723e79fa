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

    def explicit(self):
        """The flags given on the command line (or a --flagfile), by name."""
        return {name: holder.value for name, holder in self.holders.items() if holder.present}


def given_but_unused(groups, used):
    """Flag names of ``groups`` (FlagGroups) given on the command line or in a flagfile
    that the program does not read (``used``: the flag names it reads), sorted."""
    return sorted(holder.name for group in groups for holder in group.holders.values()
                  if holder.present and holder.name not in used)


def unused_flags_message(program, names, reason):
    """The one-line refusal of flags ``program`` would ignore."""
    listed = ", ".join(f"--{name}" for name in names)
    verb, it = ("does", "it") if len(names) == 1 else ("do", "them")
    return f"{listed} {verb} not apply to {program}, which would ignore {it} ({reason}); drop {it}"


def _holders(flag_values, only, **definers):
    """Defines the flags of a group (only those named in ``only``, when given); returns the FlagGroup.

    Each definer takes the FlagValues and defines one flag, so a program that
    needs part of a group (bwtf-eval needs no optimizer) never shows the rest.
    """
    unknown = set(only or ()) - set(definers)
    if unknown:
        raise ValueError(f"no such flag(s) in this group: {sorted(unknown)}")
    return FlagGroup({name: define(flag_values) for name, define in definers.items()
                      if only is None or name in only})


def define_model_flags(flag_values=flags.FLAGS, only=None):
    return _holders(
        flag_values, only,
        model=lambda f: flags.DEFINE_enum("model", "resnet50", models.MODEL_NAMES, "Network architecture.",
                                flag_values=f),
        image_size=lambda f: flags.DEFINE_integer(
            "image_size", 0, "Input side length in pixels; 0 = the model's native size.",
            lower_bound=0, flag_values=f),
        num_classes=lambda f: flags.DEFINE_integer(
            "num_classes", 0, "Classes; 0 = read from the dataset (1000 with synthetic data).",
            lower_bound=0, flag_values=f),
    )


def define_data_flags(flag_values=flags.FLAGS, only=None):
    return _holders(
        flag_values, only,
        data_dir=lambda f: flags.DEFINE_string("data_dir", None, "TFDS data_dir holding --dataset.",
                                     flag_values=f),
        dataset=lambda f: flags.DEFINE_string("dataset", "imagenet_archive", "TFDS dataset name[/config].",
                                    flag_values=f),
        use_synthetic_data=lambda f: flags.DEFINE_bool(
            "use_synthetic_data", False, "Constant random batches instead of a dataset (smoke tests).",
            flag_values=f),
        use_bbox_crop=lambda f: flags.DEFINE_bool(
            "use_bbox_crop", False, "Training crops must cover part of the dataset's bboxes.",
            flag_values=f),
        train_split=lambda f: flags.DEFINE_string("train_split", "train", "Split to train on.", flag_values=f),
        eval_split=lambda f: flags.DEFINE_string("eval_split", "validation", "Split to evaluate on.",
                                       flag_values=f),
        min_crop_area=lambda f: flags.DEFINE_float(
            "min_crop_area", 0.08, "Smallest image fraction a training crop keeps.",
            lower_bound=0.01, upper_bound=1.0, flag_values=f),
        shuffle_buffer=lambda f: flags.DEFINE_integer("shuffle_buffer", 10000, "Examples in the shuffle buffer.",
                                            lower_bound=1, flag_values=f),
        seed=lambda f: flags.DEFINE_integer("seed", None, "Shuffle seed (None: random).", flag_values=f),
    )


def define_train_flags(flag_values=flags.FLAGS, only=None):
    return _holders(
        flag_values, only,
        model_dir=lambda f: flags.DEFINE_string("model_dir", None, "Checkpoints and summaries go here.", flag_values=f),
        batch_size=lambda f: flags.DEFINE_integer("batch_size", 32, "Images per step per worker.", lower_bound=1,
                                        flag_values=f),
        train_steps=lambda f: flags.DEFINE_integer(
            "train_steps", 1000, "The run's last global step: training stops there, a continuous "
            "evaluator after evaluating it.", lower_bound=1,
                                         flag_values=f),
        distribution=lambda f: flags.DEFINE_enum("distribution", "ps", config.DISTRIBUTIONS,
                                       "ps: variables on ps tasks; collective: all-reduce "
                                       "(MultiWorkerMirroredStrategy); none: one process.", flag_values=f),
        sync_replicas=lambda f: flags.DEFINE_bool("sync_replicas", False, "Synchronous ps updates (SyncReplicasOptimizer).",
                                        flag_values=f),
        precision=lambda f: flags.DEFINE_enum("precision", "fp32", config.PRECISIONS,
                                    "Compute dtype; variables stay fp32; fp16 uses loss scaling.", flag_values=f),
        xla=lambda f: flags.DEFINE_bool("xla", False, "Compile the model with XLA.", flag_values=f),
        base_lr=lambda f: flags.DEFINE_float("base_lr", None, "Learning rate per 256 images of one update, before "
                                   "scaling (default: the model's recipe, e.g. 0.1 for resnet50).",
                                   lower_bound=0.0, flag_values=f),
        lr_scaling=lambda f: flags.DEFINE_enum("lr_scaling", "linear", config.LR_SCALINGS,
                                     "linear: x images per update/256 (per-worker batch when asynchronous, "
                                     "global batch when synchronous); sqrt: x sqrt(workers per update); none.",
                                     flag_values=f),
        warmup_steps=lambda f: flags.DEFINE_integer("warmup_steps", None, "Linear LR warmup steps (default: the "
                                          "model's recipe, e.g. 5/90 of --train_steps for resnet50).",
                                          lower_bound=0, flag_values=f),
        lr_decay=lambda f: flags.DEFINE_enum("lr_decay", None, config.LR_DECAYS,
                                   "LR decay after warmup (default: the model's recipe).", flag_values=f),
        lr_decay_boundaries=lambda f: flags.DEFINE_list("lr_decay_boundaries", None,
                                              "Fractions of train_steps where step decay applies (default: "
                                              "the model's recipe, e.g. 30/90,60/90,80/90).", flag_values=f),
        lr_decay_factor=lambda f: flags.DEFINE_float("lr_decay_factor", 0.1, "Step decay multiplier.", flag_values=f),
        weight_decay=lambda f: flags.DEFINE_float("weight_decay", None, "L2 factor, batch norm excluded (default: "
                                        "the model's recipe).", lower_bound=0.0, flag_values=f),
        label_smoothing=lambda f: flags.DEFINE_float("label_smoothing", None, "Label smoothing (default: the model's "
                                           "recipe).", lower_bound=0.0, upper_bound=0.99, flag_values=f),
        momentum=lambda f: flags.DEFINE_float("momentum", 0.9, "SGD momentum.", lower_bound=0.0, upper_bound=0.999,
                                    flag_values=f),
        nesterov=lambda f: flags.DEFINE_bool("nesterov", False, "Nesterov momentum.", flag_values=f),
        eval_steps=lambda f: flags.DEFINE_integer("eval_steps", 0, "Eval batches; 0 = the whole split.", lower_bound=0,
                                        flag_values=f),
        eval_throttle_secs=lambda f: flags.DEFINE_integer("eval_throttle_secs", 60,
                                                "Seconds between evaluator runs.", lower_bound=1, flag_values=f),
        eval_every_steps=lambda f: flags.DEFINE_integer(
            "eval_every_steps", 0, "distribution=none: evaluate every N steps (0: once at the end).",
            lower_bound=0, flag_values=f),
        log_every_steps=lambda f: flags.DEFINE_integer("log_every_steps", 100, "Steps between progress lines.",
                                             lower_bound=1, flag_values=f),
    )


def define_checkpoint_flags(flag_values=flags.FLAGS, only=None):
    return _holders(
        flag_values, only,
        save_checkpoints_steps=lambda f: flags.DEFINE_integer("save_checkpoints_steps", None,
                                                    "Save every N global steps.", lower_bound=1, flag_values=f),
        save_checkpoints_secs=lambda f: flags.DEFINE_integer("save_checkpoints_secs", None,
                                                   "Save every N seconds (default 600 when no steps given).",
                                                   lower_bound=1, flag_values=f),
        keep_checkpoints=lambda f: flags.DEFINE_integer("keep_checkpoints", 5, "Newest checkpoints kept.", lower_bound=1,
                                              flag_values=f),
        ckpt_staging_dir=lambda f: flags.DEFINE_string(
            "ckpt_staging_dir", None, "gs:// model_dir only: local directory for a save's groups in flight "
            "(each uploaded once written) and a restore's download (default: the temporary directory).", flag_values=f),
    )


def define_cluster_flags(flag_values=flags.FLAGS, only=None):
    return _holders(
        flag_values, only,
        source=lambda f: flags.DEFINE_enum("cluster", "auto", cluster.SOURCES, "Where this task's role comes from.",
                                 flag_values=f),
        job_name=lambda f: flags.DEFINE_enum("job_name", None, ["ps", "worker", "evaluator"], "Classic role flag.",
                                   flag_values=f),
        task_index=lambda f: flags.DEFINE_integer("task_index", None, "Classic task index.", lower_bound=0,
                                        flag_values=f),
        ps_hosts=lambda f: flags.DEFINE_list("ps_hosts", [], "Classic: comma-separated ps host:port.", flag_values=f),
        worker_hosts=lambda f: flags.DEFINE_list("worker_hosts", [], "Classic: worker host:port; worker 0 is the chief.",
                                       flag_values=f),
        num_ps=lambda f: flags.DEFINE_integer("num_ps", 1, "Slurm/PBS: how many tasks are ps (distribution=ps).",
                                    lower_bound=0, flag_values=f),
        peer_timeout_secs=lambda f: flags.DEFINE_float(
            "peer_timeout_secs", 600.0, "How long a training task waits for the tasks it needs (the ps, or "
            "the other workers) to answer before it gives up with exit 2.", lower_bound=0.0, flag_values=f),
    )


def _decay_boundaries(text_values):
    if text_values is None:
        return None
    try:
        return tuple(_fraction(v) for v in text_values)
    except (ValueError, ZeroDivisionError):
        raise config.ConfigError(
            f"--lr_decay_boundaries must be comma-separated fractions such as 0.3,0.6,0.8 or 30/90,60/90; "
            f"found {','.join(text_values)}") from None


def _fraction(text):
    """A float, or a quotient such as 30/90."""
    numerator, _, denominator = text.partition("/")
    return float(numerator) / float(denominator) if denominator else float(numerator)


def optimizer_config(train_values, model_name):
    """OptimizerConfig from ``define_train_flags().values()``: the model's recipe, flags overriding it."""
    v = train_values
    return config.optimizer_for_model(
        model_name, v["train_steps"], base_lr=v["base_lr"], lr_scaling=v["lr_scaling"],
        warmup_steps=v["warmup_steps"], decay=v["lr_decay"],
        decay_boundaries=_decay_boundaries(v["lr_decay_boundaries"]), decay_factor=v["lr_decay_factor"],
        weight_decay=v["weight_decay"], label_smoothing=v["label_smoothing"], momentum=v["momentum"],
        nesterov=v["nesterov"])


def dataset_config(data_values, image_size, num_classes=None, model_name=None):
    """DatasetConfig from ``define_data_flags().values()``, with ``model_name``'s eval crop
    (flags a program left out keep their defaults)."""
    v = data_values
    crop = models.eval_crop(model_name) if model_name else "resize_shorter_side"
    optional = {field: v[field] for field in ("use_bbox_crop", "train_split", "eval_split", "shuffle_buffer",
                                              "seed", "min_crop_area") if field in v}
    return config.DatasetConfig(
        eval_crop=crop,
        name=v["dataset"], data_dir=v["data_dir"], image_size=image_size, num_classes=num_classes or None,
        use_synthetic_data=v["use_synthetic_data"], **optional)


def image_size(model_values):
    return model_values["image_size"] or models.default_image_size(model_values["model"])

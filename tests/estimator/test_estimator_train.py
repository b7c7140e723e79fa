"""train.py in one process: precisions, checkpoints through bwtf.ckpt, and clear errors."""
import math
import os

import pytest
import tensorflow as tf

from bwtf import ckpt
from bwtf.estimator import config, inputs, model_fn
from bwtf.estimator.cluster import roles as cluster
from bwtf.estimator.runner import spec as runner_spec
from bwtf.estimator.training import task as train
from estimator_helpers import run_train

_SYNTHETIC = ["--model=small_cnn", "--use_synthetic_data", "--num_classes=10", "--image_size=32",
              "--batch_size=4", "--log_every_steps=5", "--eval_steps=2", "--distribution=none"]


@pytest.mark.parametrize("extra", [["--precision=fp16"], ["--precision=bf16", "--xla"], ["--nesterov",
                                   "--lr_scaling=sqrt", "--lr_decay=step", "--warmup_steps=2"]])
def test_single_process_training_writes_a_committed_checkpoint(train_flags, tmp_path, extra, caplog):
    values = train_flags(*_SYNTHETIC, f"--model_dir={tmp_path}", "--train_steps=6", *extra)
    assert train.run_task(values) == 0
    latest = ckpt.latest_intact_checkpoint(str(tmp_path))
    assert latest is not None and latest.step == 6
    weights = tf.train.load_checkpoint(latest.path)
    kernel = weights.get_tensor("model/logits/kernel")
    assert kernel.dtype.name == "float32" and all(math.isfinite(x) for x in kernel.ravel())


def test_training_resumes_from_the_newest_checkpoint(train_flags, tmp_path):
    common = [*_SYNTHETIC, f"--model_dir={tmp_path}", "--log_every_steps=2"]
    assert train.run_task(train_flags(*common, "--train_steps=4")) == 0
    assert train.run_task(train_flags(*common, "--train_steps=8")) == 0
    assert [s.step for s in ckpt.list_checkpoints(str(tmp_path)) if s.intact][-2:] == [4, 8]
    tags = set()
    for events in tmp_path.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            tags.update(value.tag for value in event.summary.value)
    assert {"loss", "learning_rate", "train_precision_at_1", "throughput/images_per_sec"} <= tags


def test_restore_into_another_class_count_is_refused_before_training(train_flags, tmp_path):
    assert train.run_task(train_flags(*_SYNTHETIC, f"--model_dir={tmp_path}", "--train_steps=2")) == 0
    values = train_flags(*_SYNTHETIC[:2], "--num_classes=5", *_SYNTHETIC[3:], f"--model_dir={tmp_path}",
                         "--train_steps=4")
    # The run record names both values before any variable is compared.
    with pytest.raises(config.ConfigError, match="--num_classes=5 but this model_dir was trained with "
                                                 "--num_classes=10"):
        train.run_task(values)
    assert ckpt.latest_intact_checkpoint(str(tmp_path)).step == 2, "nothing may be trained or written"


def test_a_record_without_any_checkpoint_is_rewritten_by_the_next_chief(train_flags, tmp_path):
    import json
    import shutil

    assert train.run_task(train_flags(*_SYNTHETIC, f"--model_dir={tmp_path}", "--train_steps=2")) == 0
    for name in os.listdir(tmp_path):  # as if the first chief died before its first checkpoint
        if name.startswith("ckpt-") or name in ("LATEST", "checkpoint"):
            shutil.rmtree(tmp_path / name) if (tmp_path / name).is_dir() else os.remove(tmp_path / name)
    values = train_flags(*_SYNTHETIC[:2], "--num_classes=5", *_SYNTHETIC[3:], f"--model_dir={tmp_path}",
                         "--train_steps=2")
    assert train.run_task(values) == 0
    assert json.loads((tmp_path / "run.json").read_text())["model"]["num_classes"] == 5


def _under_a_file(tmp_path):
    # Not even root can create a folder inside a regular file.
    (tmp_path / "a-file").write_text("")
    return str(tmp_path / "a-file" / "run")


@pytest.mark.parametrize("extra, error, message", [
    (lambda t: [f"--model_dir={t / 'run'}", f"--data_dir={t}", "--nouse_synthetic_data"],
     inputs.DatasetError, "does not contain the dataset"),
    (lambda t: [f"--model_dir={_under_a_file(t)}"], ckpt.CheckpointError, "a-file"),
    (lambda t: ["--model_dir="], config.ConfigError, "--model_dir is required"),
    (lambda t: [f"--model_dir={t / 'run'}", "--image_size=8"], config.ConfigError, "too small"),
    (lambda t: [f"--model_dir={t / 'run'}", "--lr_decay_boundaries=0.5,late"], config.ConfigError,
     "comma-separated fractions"),
    (lambda t: [f"--model_dir={t / 'run'}", "--job_name=worker", "--task_index=0",
                "--worker_hosts=localhost:1,localhost:2"], cluster.ClusterError, "--distribution=none but"),
    (lambda t: [f"--model_dir={t / 'run'}", "--distribution=collective", "--job_name=worker", "--task_index=0",
                "--ps_hosts=localhost:3", "--worker_hosts=localhost:1"], cluster.ClusterError, "needs no ps"),
    (lambda t: [f"--model_dir={t / 'run'}", "--distribution=ps", "--job_name=worker", "--task_index=0",
                "--worker_hosts=localhost:1,localhost:2"], cluster.ClusterError, "lists no ps task"),
])
def test_bad_input_is_refused_before_training(train_flags, tmp_path, extra, error, message):
    with pytest.raises(error, match=message):
        train.run_task(train_flags(*_SYNTHETIC, *extra(tmp_path)))
    assert not (tmp_path / "run").exists(), "a refused run must not create its model_dir"


@pytest.mark.parametrize("flag", [
    "--model=vgg16", "--batch_size=0", "--train_steps=0", "--image_size=-1", "--num_classes=-3",
    "--precision=fp8", "--distribution=horovod", "--cluster=cloud", "--job_name=master", "--task_index=-1",
    "--lr_scaling=cubic", "--lr_decay=exponential", "--base_lr=-0.1", "--warmup_steps=-5",
    "--weight_decay=-1", "--label_smoothing=1.5", "--momentum=1.5", "--min_crop_area=0", "--shuffle_buffer=0",
    "--save_checkpoints_steps=0", "--save_checkpoints_secs=0", "--keep_checkpoints=0", "--eval_steps=-1",
    "--eval_throttle_secs=0", "--log_every_steps=0", "--num_ps=-1", "--xla=maybe", "--eval_timeout_secs=-1",
])
def test_each_flag_rejects_a_bad_value(train_flags, flag):
    from absl import flags

    with pytest.raises(flags.Error, match=flag.split("=")[0].lstrip("-")):
        train_flags(*_SYNTHETIC, flag)


@pytest.mark.parametrize("flag, message", [
    ("--batch_size=0", "--batch_size=0"),
    ("--flagfile=/nonexistent/job.flags", "/nonexistent/job.flags"),
])
def test_bad_flags_stop_the_program_before_it_starts(tmp_path, flag, message):
    code, log = run_train([*_SYNTHETIC, f"--model_dir={tmp_path / 'run'}", flag], tmp_path, timeout=120)
    assert code not in (0, "timeout") and message in log
    assert not (tmp_path / "run").exists()


def test_a_flagfile_configures_the_whole_job(train_flags, tmp_path):
    flagfile = tmp_path / "job.flags"
    flagfile.write_text("\n".join([*_SYNTHETIC, f"--model_dir={tmp_path / 'run'}", "--train_steps=3"]) + "\n")
    values = train_flags(f"--flagfile={flagfile}")
    assert values["train"]["train_steps"] == 3 and values["model"]["model"] == "small_cnn"
    assert train.run_task(values) == 0
    assert ckpt.latest_intact_checkpoint(str(tmp_path / "run")).step == 3


def test_user_errors_are_one_line_without_traceback(tmp_path):
    code, log = run_train(["--model=small_cnn", f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'run'}",
                           "--distribution=none"], tmp_path, timeout=120)
    assert code == 2
    assert "bwtf-train: error: data_dir" in log and "Traceback" not in log


def test_distributed_graph_saves_only_on_the_chief(tmp_path):
    """The stock sharded saver would put SaveV2/MergeV2Checkpoints on every ps."""
    train_config = config.TrainConfig(
        model=config.ModelConfig("small_cnn", 10, 32), batch_size=2, num_workers=2, distribution="ps",
        model_dir=str(tmp_path), checkpoint_device="/job:chief/task:0/device:CPU:0")
    spec = {"chief": ["localhost:1"], "worker": ["localhost:2"], "ps": ["localhost:3", "localhost:4"]}
    with tf.Graph().as_default() as graph:
        setter = tf.compat.v1.train.replica_device_setter(
            ps_tasks=2, worker_device="/job:chief/task:0", cluster=spec)
        with tf.compat.v1.device(setter):
            estimator_spec = model_fn.model_fn(tf.zeros([2, 32, 32, 3]), tf.zeros([2], tf.int64),
                                               runner_spec.ModeKeys.TRAIN, train_config)
        estimator_spec.scaffold.finalize()
        devices = {op.type: op.device for op in graph.get_operations()}
        io_ops = [op for op in graph.get_operations()
                  if op.type in ("SaveV2", "RestoreV2", "MergeV2Checkpoints")]
        variable_devices = {v.device for v in tf.compat.v1.global_variables()}
    assert any("/job:ps" in d for d in variable_devices), "the variables themselves must live on the ps"
    assert io_ops and devices
    assert all("/job:chief" in op.device and "/job:ps" not in op.device for op in io_ops)


@pytest.mark.timeout(240)
def test_sigterm_saves_and_exits_for_requeue(tmp_path):
    import signal
    import time

    from estimator_helpers import finish, start_train

    log_path = tmp_path / "train.log"
    process = start_train([*_SYNTHETIC, f"--model_dir={tmp_path / 'run'}", "--train_steps=1000000"], log_path)
    deadline = time.monotonic() + 180
    while "images/s job" not in log_path.read_text() and time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    code, log = finish(process, log_path, 120)
    assert code == ckpt.EXIT_REQUEUE, log[-3000:]
    latest = ckpt.latest_intact_checkpoint(str(tmp_path / "run"))
    assert latest is not None and latest.step >= 5


_PS_CLUSTER = {"ps": ["localhost:1"], "chief": ["localhost:2"], "worker": ["localhost:3"]}


@pytest.mark.parametrize("role, named", [
    (cluster.ClusterRole("chief", 0, {}, "local"), True),
    (cluster.ClusterRole("evaluator", 0, _PS_CLUSTER, "flags"), True),
    # A worker reports nothing, so it skips the read of the dataset's label text.
    (cluster.ClusterRole("worker", 0, _PS_CLUSTER, "flags"), False),
])
def test_the_chief_and_the_evaluator_name_the_classes_from_the_dataset(train_flags, digits_flags, tmp_path,
                                                                       role, named):
    job = train._build_job(train_flags(*digits_flags, f"--model_dir={tmp_path / 'run'}"), role)
    model = job.train.model
    assert model.class_names[:2] == ("n00000000", "n00000001")
    if named:
        assert model.label_texts == tuple(f"digit {word}" for word in (
            "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))
    else:
        assert model.label_texts == ()


def test_a_missing_training_split_names_the_flags_that_choose_it(train_flags, digits_flags, tmp_path):
    values = train_flags(*digits_flags, f"--model_dir={tmp_path / 'run'}", "--train_split=test")
    with pytest.raises(inputs.DatasetError, match="no split.*test.*--train_split/--eval_split"):
        train.run_task(values)

"""bwtf-export: the SavedModel answers real JPEG bytes through saved_model_cli, loads
without bwtf, refuses to clobber, and answers bad bytes per request instead of failing.
"""
import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
from eval_helpers import run_main, run_module

import bwtf
from bwtf.estimator import export

pytestmark = pytest.mark.timeout(300)

_SAMPLE_COUNT = 6


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    export_dir = str(tmp_path_factory.mktemp("export") / "small_cnn")
    result = run_module("bwtf.estimator.export", *trained_run.model_flags,
                        f"--model_dir={trained_run.model_dir}", f"--export_dir={export_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    # A numbered version folder, as TF Serving expects: the checkpoint's step.
    assert result.stdout.strip() == os.path.join(export_dir, "60")
    return os.path.join(export_dir, "60")


@pytest.fixture(scope="module")
def digits_validation(trained_run):
    """(encoded JPEG bytes, labels, {label: label_text}, class names) of the validation split."""
    import tensorflow_datasets as tfds

    import bwtf.data  # noqa: F401  registers the builder

    builder = tfds.builder(trained_run.dataset, data_dir=trained_run.data_dir)
    dataset = builder.as_dataset(split="validation", decoders={"image": tfds.decode.SkipDecoding()})
    images, labels, texts = [], [], {}
    for example in tfds.as_numpy(dataset):
        images.append(example["image"])
        labels.append(int(example["label"]))
        texts[int(example["label"])] = example["label_text"].decode()
    return images, np.array(labels), texts, builder.info.features["label"].names


def _saved_model_cli_run(export_dir, jpegs, tmp_path):
    inputs = tmp_path / "jpegs.npy"
    # Fixed-width bytes ('S'), so numpy loads it without pickle; JPEGs end in FF D9,
    # never in the NUL bytes numpy strips.
    np.save(inputs, np.array(jpegs, dtype=bytes))
    outdir = tmp_path / "outputs"
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
        [cli, "run", "--dir", export_dir, "--tag_set", "serve", "--signature_def",
         "serving_default", "--inputs", f"jpeg_bytes={inputs}", "--outdir", str(outdir)],
        capture_output=True, text=True, timeout=180,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return {path.stem: np.load(path, allow_pickle=True) for path in outdir.glob("*.npy")}


def _sample_jpegs(imagenet_samples_dir):
    return [path.read_bytes() for path in sorted(imagenet_samples_dir.glob("*.JPEG"))[:_SAMPLE_COUNT]]


def test_saved_model_cli_classifies_real_jpegs_like_the_evaluation_did(
        exported, digits_validation, imagenet_samples_dir, trained_run, copy_run, tmp_path):
    from bwtf.estimator.serving import signature as _export_signature

    images, labels, texts, class_names = digits_validation
    samples = _sample_jpegs(imagenet_samples_dir)
    truncated = samples[0][:samples[0].index(b"\xff\xda") + 40].rstrip(b"\0")  # cut in the scan
    bad = [b"GIF89a: not a jpeg", (imagenet_samples_dir / "README.md").read_bytes(), truncated]
    out = _saved_model_cli_run(exported, images + samples + bad, tmp_path)
    count = len(images) + len(samples)

    assert out["valid"].tolist() == [True] * count + [False] * len(bad)
    assert set(out["error"][:count].tolist()) == {b""}
    assert out["error"][count:].tolist() == [_export_signature.NOT_JPEG.encode()] * 2 + [
        _export_signature.UNDECODABLE.encode()]
    assert (out["classes"][count:] == -1).all()
    assert np.allclose(out["probabilities"][:count].sum(axis=1), 1.0, atol=1e-4)
    assert (out["probabilities"][count:] == 0).all()

    classes = out["classes"][:count]
    assert (out["top_5_classes"][:count, 0] == classes).all()
    assert [s.decode() for s in out["top_5_synsets"][:count, 0]] == [class_names[c] for c in classes]
    assert [t.decode() for t in out["top_5_labels"][:count, 0]] == [texts[c] for c in classes]
    assert np.all(np.diff(out["top_5_probabilities"][:count], axis=1) <= 0)

    # The export must reproduce the evaluation: same preprocessing, same weights.
    result = run_module("bwtf.estimator.evaluate", *trained_run.model_flags,
                        f"--model_dir={copy_run()}", "--split=validation")
    evaluated = json.loads(result.stdout)["precision_at_1"]
    served = float(np.mean(out["classes"][:len(images)] == labels))
    assert abs(served - evaluated) <= 1.0 / len(images) + 1e-6

    with open(os.path.join(exported, export.METADATA_FILE)) as stream:
        metadata = json.load(stream)
    assert metadata["global_step"] == 60 and metadata["num_classes"] == len(class_names)


_LOAD_WITHOUT_BWTF = """
import importlib.util, sys
sys.path.append(sys.argv[1])  # site-packages, without running its .pth files
assert importlib.util.find_spec("bwtf") is None, "bwtf must not be importable here"
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[2]).signatures["serving_default"]
jpegs = [open(path, "rb").read() for path in sys.argv[3:]] + [b"not a jpeg"]
out = serve(jpeg_bytes=tf.constant(jpegs))
print(out["valid"].numpy().tolist())
print([s.decode() for s in out["top_5_synsets"].numpy()[:, 0]])
"""


def test_a_fresh_process_without_bwtf_loads_and_serves_the_export(
        exported, imagenet_samples_dir, digits_validation, tmp_path):
    script = tmp_path / "serve.py"
    script.write_text(_LOAD_WITHOUT_BWTF)
    samples = sorted(str(path) for path in imagenet_samples_dir.glob("*.JPEG"))[:3]
    # -I: no PYTHONPATH, no user site, no script dir; -S: no site-packages .pth
    # files, so the editable install's finder for bwtf never loads.
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(script), sysconfig.get_paths()["purelib"], exported,
         *samples], capture_output=True, text=True, timeout=180, cwd=tmp_path,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stderr[-3000:]
    valid, synsets = result.stdout.strip().splitlines()[-2:]
    assert valid == str([True, True, True, False])
    class_names = set(digits_validation[3])
    assert all(name in class_names for name in eval(synsets)[:3])  # noqa: S307 (our own output)


def _export_argv(trained_run, export_dir, *extra):
    return [*trained_run.model_flags, f"--model_dir={trained_run.model_dir}",
            f"--export_dir={export_dir}", *extra]


def _leftovers(parent):
    return [name for name in os.listdir(parent) if name.startswith(".tmp-")]


def test_versions_accumulate_and_an_existing_version_is_kept_unless_overwrite_is_given(
        trained_run, tmp_path, capsys):
    export_dir = tmp_path / "exp"
    assert run_main(export, _export_argv(trained_run, export_dir, "--checkpoint=latest")) == 0
    metadata = export_dir / "60" / export.METADATA_FILE
    before = (export_dir / "60" / "saved_model.pb").read_bytes()
    os.utime(metadata, (1, 1))

    code = run_main(export, _export_argv(trained_run, export_dir))
    assert code == bwtf.EXIT_USAGE
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (export_dir / "60" / "saved_model.pb").read_bytes() == before
    assert metadata.stat().st_mtime == 1

    code = run_main(export, _export_argv(
        trained_run, export_dir, f"--checkpoint={trained_run.model_dir}/ckpt-20"))
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir(export_dir)) == ["20", "60"]
    assert json.loads((export_dir / "20" / export.METADATA_FILE).read_text())["global_step"] == 20

    assert run_main(export, _export_argv(trained_run, export_dir, "--overwrite")) == 0
    assert metadata.stat().st_mtime > 1
    assert _leftovers(tmp_path) == [] and _leftovers(export_dir) == []


def test_a_labels_file_names_the_classes(trained_run, digits_validation, tmp_path, capsys):
    import tensorflow as tf

    class_names = digits_validation[3]
    words = tmp_path / "words.txt"
    words.write_text("".join(f"{name}\tclass number {index}\n" for index, name in enumerate(class_names)))
    export_dir = tmp_path / "exp"
    code = run_main(export, _export_argv(trained_run, export_dir, f"--labels_file={words}"))
    assert code == 0, capsys.readouterr().err
    serve = tf.saved_model.load(str(export_dir / "60")).signatures["serving_default"]
    out = serve(jpeg_bytes=tf.constant(digits_validation[0][:4]))
    for classes, texts in zip(out["top_5_classes"].numpy(), out["top_5_labels"].numpy()):
        assert [t.decode() for t in texts] == [f"class number {c}" for c in classes]


def _bad_export_cases(trained_run, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    short_words = tmp_path / "short_words.txt"
    short_words.write_text("n00000000 digit zero\n")
    flags_without_model = [f for f in trained_run.model_flags if not f.startswith("--model=")]
    return {
        "other_model": ([*flags_without_model, "--model=resnet50",
                         f"--model_dir={trained_run.model_dir}"],
                        "--model=resnet50 contradicts the run record"),
        "empty_model_dir": ([*trained_run.model_flags, f"--model_dir={empty}"],
                            "holds no intact checkpoint"),
        "missing_labels_file": ([*trained_run.model_flags, f"--model_dir={trained_run.model_dir}",
                                 f"--labels_file={tmp_path / 'nope.txt'}"], "does not exist"),
        "no_export_dir": ([*trained_run.model_flags, f"--model_dir={trained_run.model_dir}",
                           "--export_dir="], "--export_dir is required"),
        "incomplete_labels_file": ([*trained_run.model_flags,
                                    f"--model_dir={trained_run.model_dir}",
                                    f"--labels_file={short_words}"], "has no line for 9 of the 10"),
    }


@pytest.mark.parametrize("case", ["other_model", "empty_model_dir", "missing_labels_file",
                                  "no_export_dir", "incomplete_labels_file"])
def test_bad_input_writes_nothing_and_says_why(trained_run, tmp_path, capsys, case):
    argv, message = _bad_export_cases(trained_run, tmp_path)[case]
    export_dir = tmp_path / "exp"
    code = run_main(export, [f"--export_dir={export_dir}", *argv])  # a case's own flag wins
    err = capsys.readouterr().err
    assert code == bwtf.EXIT_USAGE
    lines = [line for line in err.splitlines() if line.startswith("bwtf-export: error:")]
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert not export_dir.exists()
    assert _leftovers(tmp_path) == []


def test_serving_crops_like_the_evaluation_of_its_model(exported, imagenet_samples_dir, trained_run, tmp_path):
    """Non-square real JPEGs: the export's probabilities are the model's on inputs.eval_image_from_bytes
    with the model's own eval crop (small_cnn: the ResNet protocol, not Inception's squash)."""
    import tensorflow as tf

    from bwtf.estimator import config, inputs, model_fn, models

    samples = _sample_jpegs(imagenet_samples_dir)
    served = _saved_model_cli_run(exported, samples, tmp_path)["probabilities"]
    with open(os.path.join(exported, export.METADATA_FILE)) as stream:
        assert json.load(stream)["eval_crop"] == models.eval_crop("small_cnn") == "resize_shorter_side"
    model = config.ModelConfig("small_cnn", served.shape[1], 32)
    with tf.Graph().as_default():
        images = tf.stack([inputs.eval_image_from_bytes(jpeg, 32, "resize_shorter_side") for jpeg in samples])
        probabilities = tf.nn.softmax(model_fn.build_logits(images, model, training=False))
        with tf.compat.v1.Session() as session:
            tf.compat.v1.train.Saver().restore(
                session, os.path.join(trained_run.model_dir, "ckpt-60", "model.ckpt-60"))
            expected = session.run(probabilities)
    np.testing.assert_allclose(served, expected, atol=1e-5)

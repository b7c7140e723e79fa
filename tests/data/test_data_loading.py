"""Building and loading imagenet_archive the ways users do: both CLIs, local processes, Beam, other projects."""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import tensorflow_datasets as tfds

import bwtf.data  # noqa: F401  (registers the builder)

_PYTHON = sys.executable


def _run(args, cwd, timeout=240):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_digits_fixture_loads_with_tfds_load(digits_data_dir, digits_dataset_name):
    builder = tfds.builder(digits_dataset_name, data_dir=digits_data_dir)
    assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {"train": 1442, "validation": 355}
    example = next(iter(tfds.load(digits_dataset_name, data_dir=digits_data_dir, split="validation").take(1)))
    assert example["image"].shape == (64, 64, 3) and example["bboxes"].shape == (1, 4)
    assert builder.info.features["label"].names[:2] == ["n00000000", "n00000001"]


@pytest.mark.timeout(180)
def test_another_project_loads_the_dataset_without_bwtf(digits_data_dir, digits_dataset_name, tmp_path):
    dataset_dir = pathlib.Path(digits_data_dir, *digits_dataset_name.split("/"), "1.0.0")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["bwtf"] = None  # any attempt to import bwtf now fails
        import tensorflow_datasets as tfds
        builder = tfds.builder_from_directory({str(dataset_dir)!r})
        dataset = builder.as_dataset(split="train")
        example = next(iter(dataset))
        names = builder.info.features["label"].names
        print(builder.info.splits["train"].num_examples, example["image"].shape, names[int(example["label"])],
              example["synset"].numpy().decode(), sorted(m for m, v in sys.modules.items() if m.startswith("bwtf") and v is not None))
    """)
    result = _run([_PYTHON, "-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    count, *rest = result.stdout.split()
    assert count == "1442"
    label_name, synset, modules = rest[-3], rest[-2], rest[-1]
    assert label_name == synset and modules == "[]"


def _tfrecords(dataset_dir):
    return {p.name: p.read_bytes() for p in pathlib.Path(dataset_dir).glob("*.tfrecord*")}


def test_the_same_archive_gives_the_same_shards(tiny_archives, tools, tmp_path):
    first = tools.build(tiny_archives["fall11"], tmp_path / "a")
    second = tools.build(tiny_archives["fall11"], tmp_path / "b")
    assert _tfrecords(first.dataset_dir) == _tfrecords(second.dataset_dir) != {}


def _as_comparable(examples):
    return {name: (e["image"].tobytes(), int(e["label"]), e["synset"], e["label_text"], e["bboxes"].tobytes())
            for name, e in examples.items()}


@pytest.mark.timeout(240)
def test_two_processes_write_the_same_shard_files_as_one(tiny_archives, tools, tmp_path):
    manual_dir = tiny_archives["ilsvrc2012"]
    sequential = tools.build(manual_dir, tmp_path / "seq")
    parallel = tools.build(manual_dir, tmp_path / "par", num_workers=2)
    assert parallel.examples == sequential.examples and parallel.num_workers == 2
    assert _tfrecords(parallel.dataset_dir) == _tfrecords(sequential.dataset_dir) != {}
    assert not list(pathlib.Path(parallel.dataset_dir).glob("_*"))  # no scratch files left behind
    for split in ("train", "validation"):
        assert _as_comparable(tools.examples(parallel, split)) == _as_comparable(tools.examples(sequential, split))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_parallel_beam_build_yields_the_same_examples_as_sequential(tiny_archives, tools, tmp_path):
    pytest.importorskip("apache_beam", reason="Beam builds need the 'beam' extra (apache-beam)")
    manual_dir = tiny_archives["ilsvrc2012"]
    sequential = tools.build(manual_dir, tmp_path / "seq")
    parallel = tools.build(manual_dir, tmp_path / "par", num_workers=2, beam_pipeline_options=(
        "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"))
    assert parallel.examples == sequential.examples and parallel.num_workers == 2
    for split in ("train", "validation"):
        assert _as_comparable(tools.examples(parallel, split)) == _as_comparable(tools.examples(sequential, split))


def test_beam_is_required_only_for_beam_builds(tiny_archives, tools, tmp_path, monkeypatch):
    from bwtf.data import build as build_lib

    monkeypatch.setitem(sys.modules, "apache_beam", None)
    monkeypatch.setitem(sys.modules, "apache_beam.options", None)
    with pytest.raises(build_lib.builder_lib.BuilderConfigError, match="pip install 'bwtf\\[beam\\]'"):
        tools.build(tiny_archives["ilsvrc2012"], tmp_path / "beam", num_workers=2,
                    beam_pipeline_options="runner=DirectRunner")
    assert tools.build(tiny_archives["ilsvrc2012"], tmp_path / "local", num_workers=2).examples["train"] == 40


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("config_args, config_name, train", [
    ([], "present", 40),
    (['--config={"name": "two_per_class", "class_set": "present", "images_per_class": 2}'], "two_per_class", 20),
], ids=["default-config", "json-config"])
def test_tfds_build_cli_builds_the_dataset(config_args, config_name, train, tiny_archives, tmp_path):
    # TFDS 4.9.10's CLI defines a beam.DoFn subclass at import time (scripts/cli/convert_format_utils.py).
    pytest.importorskip("apache_beam", reason=f"TFDS {tfds.__version__}'s tfds CLI imports apache_beam at start-up, "
                        "and Beam cannot be installed beside TensorFlow 2.21; bwtf-build-data builds there")
    result = _run([_PYTHON, "-m", "tensorflow_datasets.scripts.cli.main", "build", "--imports=bwtf.data",
                   "imagenet_archive", f"--manual_dir={tiny_archives['fall11']}", f"--data_dir={tmp_path}"]
                  + config_args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "imagenet_archive").iterdir() if not p.name.startswith(".")) == [
        config_name]
    builder = tfds.builder_from_directory(str(tmp_path / "imagenet_archive" / config_name / "1.0.0"))
    assert builder.info.splits["train"].num_examples == train


@pytest.mark.timeout(240)
def test_build_cli_reads_a_flagfile_and_prints_a_summary(tiny_archives, tmp_path):
    flagfile = tmp_path / "build.flags"
    flagfile.write_text(f"--manual_dir={tiny_archives['extracted']}\n--data_dir={tmp_path / 'tfds'}\n"
                        "--class_set=present\n--images_per_class=3\n")
    result = _run([_PYTHON, "-m", "bwtf.data.build", f"--flagfile={flagfile}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imagenet_archive/present-per_class_3 written" in result.stdout
    assert "examples: train 30, validation 10 (total 40)" in result.stdout
    assert "images/s, 1 worker(s)" in result.stdout


@pytest.mark.timeout(240)
@pytest.mark.parametrize("module, args, message", [
    ("bwtf.data.build", ["--manual_dir={missing}", "--data_dir={tmp}"], "is not a directory"),
    ("bwtf.data.build", ["--manual_dir={tmp}", "--data_dir={tmp}/out"], "holds no ImageNet archive"),
    ("bwtf.data.build", ["--manual_dir={tmp}", "--data_dir={tmp}/out", "--num_workers=0"], "at least 1"),
    ("bwtf.data.build", ["--manual_dir={tmp}", "--data_dir={tmp}/out", "--class_set=all"], "--class_set"),
    ("bwtf.data.build", ["--data_dir={tmp}/out"], "--manual_dir must have a value"),
    ("bwtf.data.sample_archive", ["--out={tmp}"], "already exists and is not an empty directory"),
    ("bwtf.data.sample_archive", ["--out={tmp}/new", "--layout=zip"], "--layout"),
    ("bwtf.data.sample_archive", ["--out={tmp}/new", "--source={missing}"], "is not a directory"),
    ("bwtf.data.sample_archive", ["--out={tmp}/new", "--images_per_class=0"], "positive integer"),
], ids=["no-manual-dir", "no-layout", "zero-workers", "bad-class-set", "required", "out-exists", "bad-layout",
        "bad-source", "zero-per-class"])
def test_cli_user_errors_are_one_line_messages(module, args, message, tmp_path):
    (tmp_path / "something.txt").write_text("not an archive")
    args = [a.format(tmp=tmp_path, missing=tmp_path / "missing") for a in args]
    result = _run([_PYTHON, "-m", module] + args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "new") and not list(tmp_path.glob("out/imagenet_archive/*/1.0.0*"))


@pytest.mark.timeout(300)
def test_synset_tars_cut_into_parts_write_the_same_shards(tiny_copy, tools, tmp_path, monkeypatch):
    from bwtf.data.imagenet_archive import _parallel

    manual_dir = tiny_copy()
    tools.add_to_synset_tar(manual_dir, "n00000004", [("n00000004_9999.JPEG", b"not an image")])
    sequential = tools.build(manual_dir, tmp_path / "seq", max_bad_image_fraction=0.1)
    monkeypatch.setattr(_parallel, "PART_BYTES", 1500)  # a tiny synset tar becomes several tasks
    from bwtf.data.imagenet_archive import _examples

    item = _examples.ClassItem("train", 0, "n00000004", 4, "", "x.tar", 0, 5000, _examples.Selection(), {})
    assert [p.part for p in _parallel.split_items({"train": [item]})["train"]] == [(k, 4) for k in range(4)]
    parallel = tools.build(manual_dir, tmp_path / "par", num_workers=2, max_bad_image_fraction=0.1)
    assert _tfrecords(parallel.dataset_dir) == _tfrecords(sequential.dataset_dir) != {}
    assert parallel.bad_images == sequential.bad_images == 1

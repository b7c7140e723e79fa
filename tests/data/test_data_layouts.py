"""imagenet_archive: every layout, label source, words file and subset option, on real digit scans."""
import importlib.util
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import sklearn.datasets
import tensorflow as tf
import tensorflow_datasets as tfds

from bwtf.data import build as build_lib
from bwtf.data import sample_archive
from bwtf.data.imagenet_archive import imagenet_archive_dataset_builder as builder_lib

DIGIT_SYNSETS = [sample_archive.digit_synset(d) for d in range(10)]


def _expected_box(file_name):
    """The ink box of digits scan <index> as (ymin, xmin, ymax, xmax) in [0, 1]."""
    scan = sklearn.datasets.load_digits().images[int(file_name.split("_")[1].split(".")[0])]
    rows, cols = np.nonzero(scan)
    return [rows.min() / 8, cols.min() / 8, (rows.max() + 1) / 8, (cols.max() + 1) / 8]


@pytest.mark.parametrize("layout", sample_archive.LAYOUTS)
def test_each_layout_yields_labelled_boxed_examples(layout, tiny_archives, tools, tmp_path):
    summary = tools.build(tiny_archives[layout], tmp_path)
    assert summary.examples == {"train": 40, "validation": 10}
    assert summary.layout == layout and summary.bad_images == 0
    train = tools.examples(summary, "train")
    for file_name, example in train.items():
        synset = example["synset"].decode()
        assert file_name.startswith(synset) and example["label"] == DIGIT_SYNSETS.index(synset)
        assert example["label_text"].decode() == f"digit {sample_archive.DIGIT_WORDS[example['label']]}"
        assert example["image"].shape == (64, 64, 3)
        np.testing.assert_allclose(example["bboxes"], [_expected_box(file_name)], atol=1e-6)
    validation = tools.examples(summary, "validation")
    assert sorted(e["label"] for e in validation.values()) == list(range(10))
    assert all(e["bboxes"].shape == (1, 4) for e in validation.values())


def test_layouts_store_the_same_image_bytes(tiny_archives, tools, tmp_path):
    stored = {}
    for layout in sample_archive.LAYOUTS:
        summary = tools.build(tiny_archives[layout], tmp_path / layout)
        dataset = tfds.load(summary.dataset_name, data_dir=summary.data_dir, split="train+validation",
                            decoders={"image": tfds.decode.SkipDecoding()})
        stored[layout] = sorted(example["image"] for example in tfds.as_numpy(dataset))
    assert stored["ilsvrc2012"] == stored["fall11"] == stored["extracted"]


def _val_truth(manual_dir):
    rows = (manual_dir / "LOC_val_solution.csv").read_text().splitlines()[1:]
    return {f"{row.split(',')[0]}.JPEG": row.split(",")[1].split()[0] for row in rows}


def _write_devkit(manual_dir, truth):
    """A devkit whose ILSVRC2012 ids run backwards, so only meta.mat can map them."""
    scipy_io = pytest.importorskip("scipy.io", reason="the devkit's meta.mat is a MATLAB file")
    ids = {synset: 10 - d for d, synset in enumerate(DIGIT_SYNSETS)}
    synsets = np.array([(ids[s], s) for s in DIGIT_SYNSETS], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    meta = io.BytesIO()
    scipy_io.savemat(meta, {"synsets": synsets})
    ground_truth = "".join(f"{ids[truth[name]]}\n" for name in sorted(truth)).encode()
    with tarfile.open(manual_dir / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        for name, data in (("ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue()),
                           ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", ground_truth)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("source, remove, has_boxes", [
    ("ILSVRC2012_devkit_t12.tar.gz", (), True),
    ("LOC_val_solution.csv", (), True),
    ("LOC_val_solution.csv", ("ILSVRC2012_bbox_val_v3.tgz",), True),
    ("ILSVRC2012_bbox_val_v3.tgz", ("LOC_val_solution.csv",), True),
    ("tensorflow-datasets", ("LOC_val_solution.csv", "ILSVRC2012_bbox_val_v3.tgz"), False),
])
def test_validation_labels_come_from_the_first_source_present(source, remove, has_boxes, tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    truth = _val_truth(manual_dir)
    if source.startswith("ILSVRC2012_devkit"):
        _write_devkit(manual_dir, truth)
    for name in remove:
        (manual_dir / name).unlink()
    summary = tools.build(manual_dir, tmp_path / "tfds")
    assert source in summary.notes
    validation = tools.examples(summary, "validation")
    if source == "tensorflow-datasets":
        truth = {name: tfds_synset for name, tfds_synset in zip(
            sorted(truth), tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt").read_text().split())}
    assert {name: e["synset"].decode() for name, e in validation.items()} == truth
    assert all((e["bboxes"].shape[0] == 1) == has_boxes for e in validation.values())


@pytest.mark.parametrize("words_file, line", [
    ("LOC_synset_mapping.txt", "{synset} {words}\n"), ("words.txt", "{synset}\t{words}\n"), (None, None)])
def test_label_text_comes_from_the_words_file(words_file, line, tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    (manual_dir / "LOC_synset_mapping.txt").unlink()
    if words_file:
        (manual_dir / words_file).write_text("".join(line.format(synset=s, words=f"scan of {s}")
                                                     for s in DIGIT_SYNSETS))
    examples = tools.examples(tools.build(manual_dir, tmp_path / "tfds"), "train")
    for example in examples.values():
        expected = f"scan of {example['synset'].decode()}" if words_file else ""
        assert example["label_text"].decode() == expected


def test_images_per_class_keeps_the_first_names_of_each_class(tiny_archives, tools, tmp_path):
    summary = tools.build(tiny_archives["ilsvrc2012"], tmp_path, images_per_class=2)
    assert summary.dataset_name == "imagenet_archive/present-per_class_2"
    train = tools.examples(summary, "train")
    assert len(train) == 20 and summary.examples["validation"] == 10
    for synset in DIGIT_SYNSETS:
        names = sorted(n for n in train if n.startswith(synset))
        assert len(names) == 2


@pytest.mark.parametrize("as_file", [False, True], ids=["sequence", "file"])
def test_class_list_restricts_examples_and_labels(as_file, tiny_archives, tools, tmp_path):
    chosen = ["n00000007", "n00000003"]
    class_list = chosen
    if as_file:
        class_list = str(tmp_path / "classes.txt")
        (tmp_path / "classes.txt").write_text("n00000007 digit seven\nn00000003\n")
    summary = tools.build(tiny_archives["fall11"], tmp_path / "tfds", class_list=class_list)
    info = tfds.builder(summary.dataset_name, data_dir=summary.data_dir).info
    assert info.features["label"].names == ["n00000003", "n00000007"]
    train = tools.examples(summary, "train")
    assert len(train) == 8
    assert {(e["synset"].decode(), int(e["label"])) for e in train.values()} == {("n00000003", 0), ("n00000007", 1)}


def test_file_list_keeps_only_the_listed_images(tiny_archives, tools, tmp_path):
    manual_dir = tiny_archives["ilsvrc2012"]
    train_names = sorted(tools.examples(tools.build(manual_dir, tmp_path / "all"), "train"))[:3]
    listed = [f"{n.split('_')[0]} {n[:-5]}" for n in train_names] + ["ILSVRC2012_val_00000002.JPEG"]
    (tmp_path / "subset.txt").write_text("\n".join(listed) + "\n")
    summary = tools.build(manual_dir, tmp_path / "subset", file_list=str(tmp_path / "subset.txt"))
    assert sorted(tools.examples(summary, "train")) == train_names
    assert sorted(tools.examples(summary, "validation")) == ["ILSVRC2012_val_00000002.JPEG"]


def test_held_out_fraction_without_split_lists_is_per_class_and_stable(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy("extracted")
    for name in ("train_list.txt", "validation_list.txt"):
        (manual_dir / name).unlink()
    first = tools.build(manual_dir, tmp_path / "a", validation_fraction=0.2)
    assert first.examples == {"train": 40, "validation": 10}
    validation = tools.examples(first, "validation")
    assert sorted(e["synset"].decode() for e in validation.values()) == DIGIT_SYNSETS
    second = tools.build(manual_dir, tmp_path / "b", validation_fraction=0.2)
    assert sorted(tools.examples(second, "validation")) == sorted(validation)


def test_ilsvrc_class_set_labels_real_samples_by_their_ilsvrc_index(imagenet_samples_dir, tools, tmp_path):
    manual_dir = sample_archive.write_sample_archive(tmp_path / "manual", source=imagenet_samples_dir)
    summary = tools.build(manual_dir, tmp_path / "tfds", class_set="ilsvrc-1000")
    assert summary.dataset_name == "imagenet_archive/ilsvrc1000"
    assert sum(summary.examples.values()) == 52
    ilsvrc = tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()
    everything = tools.examples(summary, "train+validation")
    for example in everything.values():
        assert example["label"] == ilsvrc.index(example["synset"].decode())
        assert example["image"].shape[2] == 3  # the 2 grayscale JPEGs too


# The beam extra installs beside TensorFlow 2.15 only (apache-beam 2.60 needs protobuf < 4.26).
_HAS_BEAM = importlib.util.find_spec("apache_beam") is not None


@pytest.mark.parametrize("options, error, message", [
    (dict(class_set="ilsvrc-1000"), builder_lib.ManualDirError, "none of the 10 synsets"),
    (dict(class_set="bogus"), builder_lib.BuilderConfigError, "class_set must be one of"),
    (dict(images_per_class=0), builder_lib.BuilderConfigError, "images_per_class must be a positive integer"),
    (dict(validation_fraction=1.5), builder_lib.BuilderConfigError, "validation_fraction must be in"),
    (dict(max_bad_image_fraction=-1.0), builder_lib.BuilderConfigError, "max_bad_image_fraction must be in"),
    (dict(class_list=["dog"]), builder_lib.ManualDirError, "must be synsets like n01440764"),
    (dict(class_list="/nonexistent/classes.txt"), builder_lib.BuilderConfigError, "class_list file .* does not exist"),
    (dict(file_list="/nonexistent/files.txt"), builder_lib.ManualDirError, "file_list .* does not exist"),
    (dict(name="present", images_per_class=3), builder_lib.BuilderConfigError, "reserved"),
    (dict(num_workers=0), builder_lib.BuilderConfigError, "num_workers must be at least 1"),
    (dict(num_workers=2, beam_pipeline_options="runner=NoSuchRunner"), builder_lib.BuilderConfigError,
     "--beam_pipeline_options: Unexpected pipeline runner: NoSuchRunner" if _HAS_BEAM else
     "--beam_pipeline_options builds with Apache Beam, which is not installed; pip install 'bwtf\\[beam\\]'"),
])
def test_bad_options_are_refused_with_a_clear_message(options, error, message, tiny_archives, tmp_path):
    options.setdefault("class_set", "present")
    with pytest.raises(error, match=message):
        build_lib.build_dataset(tiny_archives["ilsvrc2012"], tmp_path, **options)
    assert not list(tmp_path.glob("imagenet_archive/*/1.0.0"))


def test_bad_file_list_line_names_the_line(tiny_archives, tools, tmp_path):
    (tmp_path / "list.txt").write_text("n00000001 n00000001_3\nthis line has three words\n")
    with pytest.raises(builder_lib.ManualDirError, match="line 2: expected '<synset> <image>'"):
        tools.build(tiny_archives["ilsvrc2012"], tmp_path / "tfds", file_list=str(tmp_path / "list.txt"))


def test_one_split_list_without_the_other_is_refused(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy("fall11")
    (manual_dir / "validation_list.txt").unlink()
    with pytest.raises(builder_lib.ManualDirError, match="give both split lists, or neither"):
        tools.build(manual_dir, tmp_path / "tfds")


def test_unrecognised_manual_dir_names_every_layout_looked_for(tools, tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "notes.txt").write_text("hello")
    with pytest.raises(builder_lib.ManualDirError) as raised:
        tools.build(tmp_path / "manual", tmp_path / "tfds")
    for expected in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "Images.tar", "fall11_whole.tar",
                     "<synset>/*.JPEG", "Found: notes.txt"):
        assert expected in str(raised.value)


def _xml(synset, stem, objects):
    boxes = "".join(f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                    f"<ymax>{y1}</ymax></bndbox></object>" for name, (x0, y0, x1, y1) in objects)
    return (f"<annotation><folder>{synset}</folder><filename>{stem}</filename>"
            f"<size><width>64</width><height>64</height></size>{boxes}</annotation>")


def test_boxes_are_keyed_per_image_and_other_synsets_dropped_and_counted(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy("extracted")
    own = next(p for p in sorted((manual_dir / "Annotation" / "n00000001").iterdir()))
    stem = own.name[:-4]
    # The image's own XML also boxes an object of another synset (a kit fox next to a sheepdog)...
    own.write_text(_xml("n00000001", stem, [("n00000001", (0, 0, 32, 32)), ("n00000002", (32, 32, 64, 64))]))
    # ...and a second XML about the same image is filed under another synset's folder, read after it.
    (manual_dir / "Annotation" / "n00000002" / own.name).write_text(
        _xml("n00000002", stem, [("n00000001", (0, 32, 16, 64)), ("n00000002", (16, 16, 48, 48))]))
    summary = tools.build(manual_dir, tmp_path / "tfds")
    example = {**tools.examples(summary, "train"), **tools.examples(summary, "validation")}[f"{stem}.JPEG"]
    np.testing.assert_allclose(sorted(example["bboxes"].tolist()), [[0, 0, 0.5, 0.5], [0.5, 0, 1, 0.25]])
    assert summary.corrections == {"boxes_of_other_synsets_dropped": 2}
    assert "boxes of other synsets dropped: 2" in summary.text()
    problems = builder_lib.read_report(summary.dataset_dir)["problems"]
    assert any("describes the same image" in p["reason"] for p in problems)


def test_devkit_words_label_the_classes_and_scipy_is_a_base_dependency(tiny_copy, tools, tmp_path):
    import scipy.io

    manual_dir = tiny_copy()
    (manual_dir / "LOC_synset_mapping.txt").unlink()
    synsets = np.array([(d + 1, s, f"devkit word {d}") for d, s in enumerate(DIGIT_SYNSETS)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    truth = _val_truth(manual_dir)
    ground_truth = "".join(f"{DIGIT_SYNSETS.index(truth[n]) + 1}\n" for n in sorted(truth)).encode()
    with tarfile.open(manual_dir / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        for name, data in (("d/data/meta.mat", meta.getvalue()),
                           ("d/data/ILSVRC2012_validation_ground_truth.txt", ground_truth)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    summary = tools.build(manual_dir, tmp_path / "tfds")
    for example in tools.examples(summary, "train").values():
        assert example["label_text"].decode() == f"devkit word {DIGIT_SYNSETS.index(example['synset'].decode())}"
    setup = (pathlib.Path(build_lib.__file__).resolve().parents[1] / "setup.py").read_text()
    required = setup[setup.index("_REQUIRED = ["): setup.index("_EXTRAS")]
    assert '"scipy' in required


def test_class_words_are_in_the_metadata_readable_without_bwtf(tiny_archives, tools, tmp_path):
    summary = tools.build(tiny_archives["fall11"], tmp_path / "tfds")
    script = ("import sys, tensorflow_datasets as tfds\n"
              "info = tfds.builder_from_directory(sys.argv[1]).info\n"
              "assert 'bwtf' not in sys.modules\n"
              "print(repr((info.features['label'].names, info.metadata['synsets'], info.metadata['words'])))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script, summary.dataset_dir], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    names, synsets, words = eval(done.stdout.strip().splitlines()[-1])  # pylint: disable=eval-used
    assert names == synsets == DIGIT_SYNSETS
    assert words == [f"digit {word}" for word in sample_archive.DIGIT_WORDS]


def test_the_report_is_written_before_a_build_of_only_damaged_images_fails(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy("extracted")
    for name in ("train_list.txt", "validation_list.txt"):
        (manual_dir / name).unlink()
    for image in manual_dir.glob("n0000000*/*.JPEG"):
        image.write_bytes(b"<html>404</html>")
    with pytest.raises(builder_lib.BadImagesError, match="no usable image.*The report is in") as raised:
        tools.build(manual_dir, tmp_path / "tfds", max_bad_image_fraction=1.0, validation_fraction=0.0)
    kept = pathlib.Path(str(raised.value).rsplit(" ", 1)[-1])
    assert len(json.loads(kept.read_text())["bad_images"]) == 50
    assert [p.name for p in (tmp_path / "tfds").rglob("*") if p.is_file()] == [kept.name]


def test_the_summary_names_the_dataset_flag_and_a_reuse_reports_no_throughput(tiny_archives, tools, tmp_path):
    first = tools.build(tiny_archives["ilsvrc2012"], tmp_path, images_per_class=2)
    assert f"train with: --dataset=imagenet_archive/present-per_class_2 --data_dir={tmp_path}" in first.text()
    again = tools.build(tiny_archives["ilsvrc2012"], tmp_path, images_per_class=2)
    assert again.reused and "nothing to build" in again.text() and "images/s" not in again.text()


def test_training_names_the_configs_built_next_to_the_one_it_looked_for(tiny_archives, tools, tmp_path):
    from bwtf.estimator import config as config_lib
    from bwtf.estimator import inputs

    tools.build(tiny_archives["ilsvrc2012"], tmp_path, images_per_class=2)
    with pytest.raises(inputs.DatasetError, match=r"Built here: --dataset=imagenet_archive/present-per_class_2\."):
        inputs.dataset_metadata(config_lib.DatasetConfig(name="imagenet_archive/present", data_dir=str(tmp_path)))

"""imagenet_archive: damaged images, odd formats, hostile tars and bad annotations."""
import gzip
import io
import json
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from bwtf.data.imagenet_archive import imagenet_archive_dataset_builder as builder_lib

SYNSET = "n00000004"


def _cmyk_jpeg():
    pil = pytest.importorskip("PIL.Image", reason="Pillow writes the CMYK JPEG fixture")
    buffer = io.BytesIO()
    pil.new("RGB", (40, 30), (200, 30, 60)).convert("CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


def _damaged(good_jpeg):
    return [(f"{SYNSET}_9001.JPEG", b""), (f"{SYNSET}_9002.JPEG", good_jpeg[: len(good_jpeg) // 2]),
            (f"{SYNSET}_9003.JPEG", b"<html>404</html>")]


def _a_jpeg(tools, manual_dir):
    (_, synset_tar), *_ = tools.members((manual_dir / "ILSVRC2012_img_train.tar").read_bytes())
    return tools.members(synset_tar)[0][1]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("num_workers", [1, 2], ids=["sequential", "two-processes"])
def test_damaged_images_are_skipped_and_reported_odd_formats_converted(num_workers, tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    # TensorFlow has run ops in this process before the workers start, as in
    # any program that builds after using TF; re-encoding in them must work.
    png = tf.io.encode_png(np.full((20, 30, 3), 90, np.uint8)).numpy()
    gray = tf.io.encode_jpeg(np.full((20, 30, 1), 90, np.uint8)).numpy()
    tools.add_to_synset_tar(manual_dir, SYNSET, _damaged(_a_jpeg(tools, manual_dir)) + [
        (f"{SYNSET}_9004.JPEG", _cmyk_jpeg()), (f"{SYNSET}_9005.JPEG", png), (f"{SYNSET}_9006.JPEG", gray)])
    summary = tools.build(manual_dir, tmp_path / "tfds", max_bad_image_fraction=0.2, num_workers=num_workers)
    assert summary.examples["train"] == 43 and summary.bad_images == 3 and summary.reencoded == 2
    report = builder_lib.read_report(summary.dataset_dir)
    reasons = {os.path.basename(e["file"]): e["reason"] for e in report["bad_images"]}
    assert set(reasons) == {f"{SYNSET}_900{i}.JPEG" for i in (1, 2, 3)}
    assert "empty" in reasons[f"{SYNSET}_9001.JPEG"] and "truncated" in reasons[f"{SYNSET}_9002.JPEG"]
    train = tools.examples(summary, "train")
    assert train[f"{SYNSET}_9004.JPEG"]["image"][0, 0].tolist() == pytest.approx([200, 30, 60], abs=12)
    assert train[f"{SYNSET}_9005.JPEG"]["image"].shape == (20, 30, 3)
    assert train[f"{SYNSET}_9006.JPEG"]["image"].shape == (20, 30, 3)
    assert "bad images skipped: 3; re-encoded: 2" in summary.text()


def test_too_many_damaged_images_fail_the_build_and_leave_no_dataset(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    tools.add_to_synset_tar(manual_dir, SYNSET, _damaged(_a_jpeg(tools, manual_dir)))
    with pytest.raises(builder_lib.BadImagesError, match="3 of 53 images .* above max_bad_image_fraction=0.05"):
        tools.build(manual_dir, tmp_path / "tfds", max_bad_image_fraction=0.05)
    config_dir = tmp_path / "tfds" / "imagenet_archive" / "present-max_bad_0.05"
    assert [p.name for p in config_dir.iterdir()] == ["bad_images-1.0.0.json"]
    kept = json.loads((config_dir / "bad_images-1.0.0.json").read_text())
    assert len(kept["bad_images"]) == 3


def _hostile(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def test_hostile_tar_members_are_ignored_reported_and_never_extracted(tiny_copy, tools, tmp_path, monkeypatch):
    manual_dir = tiny_copy()
    monkeypatch.chdir(tmp_path)
    tools.add_to_synset_tar(manual_dir, SYNSET, [
        _hostile(f"{SYNSET}_link.JPEG", tarfile.SYMTYPE, "/etc/shadow"),
        _hostile(f"{SYNSET}_hard.JPEG", tarfile.LNKTYPE, f"{SYNSET}_1.JPEG"),
        _hostile("dev_null", tarfile.CHRTYPE),
        ("../../escaped.JPEG", b"\xff\xd8"), ("/tmp/absolute.JPEG", b"\xff\xd8")])
    before = set(os.listdir(tmp_path))
    summary = tools.build(manual_dir, tmp_path / "tfds")
    assert summary.examples["train"] == 40 and summary.skipped_members == 5
    report = builder_lib.read_report(summary.dataset_dir)
    assert {e["file"].rsplit("/", 1)[-1] for e in report["skipped_members"]} >= {"escaped.JPEG", "absolute.JPEG"}
    assert set(os.listdir(tmp_path)) - before == {"tfds"}
    assert not os.path.exists("/tmp/absolute.JPEG") and not (tmp_path.parent.parent / "escaped.JPEG").exists()


def _rewrite_bbox_train(manual_dir, tools, replace):
    path = manual_dir / "ILSVRC2012_bbox_train_v2.tar.gz"
    members = [(name, replace.get(os.path.basename(name), data)) for name, data in
               tools.members(gzip.decompress(path.read_bytes()))]
    path.write_bytes(gzip.compress(tools.tar_bytes(members)))
    return sorted(replace)


def test_bad_annotations_never_cost_their_image(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    names = [os.path.basename(n) for n, _ in tools.members(
        gzip.decompress((manual_dir / "ILSVRC2012_bbox_train_v2.tar.gz").read_bytes()))]
    laughs = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
              b"<annotation>&b;</annotation>")
    broken, hostile = _rewrite_bbox_train(manual_dir, tools, {names[0]: b"<annotation><object>", names[1]: laughs})
    summary = tools.build(manual_dir, tmp_path / "tfds")
    assert summary.examples["train"] == 40 and summary.problems == 2
    train = tools.examples(summary, "train")
    for xml_name in (broken, hostile):
        assert train[xml_name.replace(".xml", ".JPEG")]["bboxes"].shape == (0, 4)
    reasons = sorted(e["reason"] for e in builder_lib.read_report(summary.dataset_dir)["problems"])
    assert reasons[0].startswith("malformed XML") and reasons[1].startswith("unsafe XML refused")


def test_missing_box_archive_keeps_every_image_without_boxes(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    (manual_dir / "ILSVRC2012_bbox_train_v2.tar.gz").unlink()
    summary = tools.build(manual_dir, tmp_path / "tfds")
    assert summary.examples == {"train": 40, "validation": 10}
    assert all(e["bboxes"].shape == (0, 4) for e in tools.examples(summary, "train").values())


def test_non_synset_members_of_the_outer_tar_are_reported(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    path = manual_dir / "ILSVRC2012_img_train.tar"
    path.write_bytes(tools.tar_bytes(tools.members(path.read_bytes()) + [("README.txt", b"hello")]))
    summary = tools.build(manual_dir, tmp_path / "tfds")
    assert summary.examples["train"] == 40
    problems = builder_lib.read_report(summary.dataset_dir)["problems"]
    assert [p["file"].rsplit(":", 1)[-1] for p in problems] == ["README.txt"]


def test_a_cut_short_train_tar_is_a_clear_error(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    path = manual_dir / "ILSVRC2012_img_train.tar"
    path.write_bytes(path.read_bytes()[:-30000])  # an interrupted download or copy
    with pytest.raises(builder_lib.ManualDirError, match="ILSVRC2012_img_train.tar.*re-download or re-copy it"):
        tools.build(manual_dir, tmp_path / "tfds")


def test_a_damaged_synset_tar_is_reported_and_the_rest_is_built(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    path = manual_dir / "ILSVRC2012_img_train.tar"
    outer = tools.members(path.read_bytes())
    outer = [(name, b"\x01" * len(data) if name == f"{SYNSET}.tar" else data) for name, data in outer]
    path.write_bytes(tools.tar_bytes(outer))
    summary = tools.build(manual_dir, tmp_path / "tfds", max_bad_image_fraction=0.1)
    assert summary.examples["train"] == 36 and summary.bad_images == 1
    (entry,) = builder_lib.read_report(summary.dataset_dir)["bad_images"]
    assert entry["file"].endswith(f":{SYNSET}") and "synset tar unreadable" in entry["reason"]


@pytest.mark.parametrize("content, message", [
    ("Id,Label\nILSVRC2012_val_00000001,n00000001 1 2 3 4\n", "expected the header 'ImageId,PredictionString'"),
    ("", "found an empty file"),
    ("ImageId,PredictionString\nILSVRC2012_val_00000001,n00000001 1 2 3\n", "line 2: expected 'synset xmin"),
    ("ImageId,PredictionString\nILSVRC2012_val_00000001,dog 1 2 3 4\n", "line 2: expected 'synset xmin"),
    ("ImageId,PredictionString\nILSVRC2012_val_00000001,n00000001 1 2 x 4\n", "line 2: box coordinates must be"),
], ids=["header", "empty", "short-box", "not-a-synset", "not-a-number"])
def test_a_malformed_loc_val_solution_is_a_clear_error(content, message, tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    (manual_dir / "LOC_val_solution.csv").write_text(content)
    with pytest.raises(builder_lib.ManualDirError, match=message):
        tools.build(manual_dir, tmp_path / "tfds")


def test_a_devkit_without_its_ground_truth_is_a_clear_error(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    (manual_dir / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(
        gzip.compress(tools.tar_bytes([("ILSVRC2012_devkit_t12/data/meta.mat", b"MATLAB")])))
    with pytest.raises(builder_lib.ManualDirError, match="lacks data/ILSVRC2012_validation_ground_truth.txt"):
        tools.build(manual_dir, tmp_path / "tfds")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("num_workers", [1, 2], ids=["sequential", "two-processes"])
def test_a_repeated_validation_file_name_is_used_once_and_reported(num_workers, tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    val_tar = manual_dir / "ILSVRC2012_img_val.tar"
    members = tools.members(val_tar.read_bytes())
    name, data = members[0]
    val_tar.write_bytes(tools.tar_bytes(members + [(f"copy/{name}", data)]))
    summary = tools.build(manual_dir, tmp_path / "tfds", num_workers=num_workers)
    assert summary.examples["validation"] == 10 and summary.problems == 1
    assert builder_lib.read_report(summary.dataset_dir)["problems"] == [
        {"file": f"{val_tar}:copy/{name}", "reason": "another member has the same file name; only the first is used"}]


@pytest.mark.timeout(120)
def test_a_worker_process_that_dies_fails_the_build_clearly(tiny_archives, tools, tmp_path, monkeypatch):
    from bwtf.data import images  # the workers are forked, so they run the patched code

    monkeypatch.setattr(images, "to_storable_jpeg", lambda data: os._exit(1))
    with pytest.raises(builder_lib.WorkerError, match="worker process died"):
        tools.build(tiny_archives["ilsvrc2012"], tmp_path / "tfds", num_workers=2)
    assert not list((tmp_path / "tfds").glob("imagenet_archive/*/1.0.0*"))

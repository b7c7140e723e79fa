"""imagenet_archive on the Kaggle layout: the zip read in place and the unzipped tree (issue 14)."""
import os
import struct
import subprocess
import sys
import zipfile

import pytest
import tensorflow_datasets as tfds

from bwtf.data import sample_archive
from bwtf.data.imagenet_archive import _kaggle
from bwtf.data.imagenet_archive import imagenet_archive_dataset_builder as builder_lib

_TRAIN = "ILSVRC/Data/CLS-LOC/train"


@pytest.mark.parametrize("layout", ["kaggle", "kaggle-tree"])
def test_real_samples_get_tfds_imagenet2012_labels_as_in_the_ilsvrc_layout(layout, imagenet_samples_dir, tools,
                                                                           tmp_path):
    ilsvrc = tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()
    built = {}
    for name in ("ilsvrc2012", layout):
        manual_dir = sample_archive.write_sample_archive(tmp_path / name, name, source=imagenet_samples_dir)
        summary = tools.build(manual_dir, tmp_path / f"tfds-{name}", class_set="ilsvrc-1000")
        assert summary.layout == name and sum(summary.examples.values()) == 52
        built[name] = {split: {file_name: (int(e["label"]), e["synset"].decode(), e["label_text"].decode(),
                                           e["image"].tobytes(), e["bboxes"].tolist())
                               for file_name, e in tools.examples(summary, split).items()}
                       for split in ("train", "validation")}
    for split, examples in built[layout].items():
        assert examples == built["ilsvrc2012"][split]
        assert all(label == ilsvrc.index(synset) for label, synset, *_ in examples.values())


def test_the_zip_is_read_in_place_and_nothing_is_extracted(tiny_archives, tools, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manual_dir = tiny_archives["kaggle"]
    assert os.listdir(manual_dir) == [_kaggle.ZIP_NAME]
    summary = tools.build(manual_dir, tmp_path / "tfds")
    assert summary.examples == {"train": 40, "validation": 10}
    assert sorted(os.listdir(tmp_path)) == ["tfds"] and os.listdir(manual_dir) == [_kaggle.ZIP_NAME]


def _patch_declared_size(path, name, size):
    """Rewrites the uncompressed size the zip's directory declares for ``name`` (a lying zip)."""
    data = bytearray(path.read_bytes())
    entry = b"PK\x01\x02"  # a directory entry: 46 fixed bytes, then the name
    at = data.index(entry)
    while data[at + 46 : at + 46 + len(name)] != name.encode():
        at = data.index(entry, at + 4)
    struct.pack_into("<I", data, at + 24, size)
    path.write_bytes(bytes(data))


def _hostile_kaggle_zip(tiny_archives, tmp_path, bomb_bytes):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    path = manual_dir / _kaggle.ZIP_NAME
    with zipfile.ZipFile(tiny_archives["kaggle"] / _kaggle.ZIP_NAME) as source, \
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        link = zipfile.ZipInfo(f"{_TRAIN}/n00000001/n00000001_link.JPEG")
        link.create_system, link.external_attr = 3, 0o120777 << 16
        target.writestr(link, "/etc/passwd")
        target.writestr(f"{_TRAIN}/n00000001/../../../../../escape.JPEG", b"x")
        target.writestr(f"/{_TRAIN}/n00000001/n00000001_absolute.JPEG", b"x")
        with target.open(f"{_TRAIN}/n00000001/n00000001_bomb.JPEG", "w", force_zip64=True) as bomb:
            chunk = bytes(16 << 20)
            for start in range(0, bomb_bytes, len(chunk)):
                bomb.write(chunk[: min(len(chunk), bomb_bytes - start)])
    _patch_declared_size(path, f"{_TRAIN}/n00000001/n00000001_bomb.JPEG", 1000)
    return manual_dir


def test_hostile_zip_members_are_reported_and_skipped_and_nothing_extracted(tiny_archives, tools, tmp_path,
                                                                          monkeypatch):
    manual_dir = _hostile_kaggle_zip(tiny_archives, tmp_path, bomb_bytes=64 << 20)
    monkeypatch.chdir(tmp_path)
    summary = tools.build(manual_dir, tmp_path / "tfds", max_bad_image_fraction=0.1)
    assert summary.examples == {"train": 40, "validation": 10} and summary.bad_images == 1
    report = builder_lib.read_report(summary.dataset_dir)
    (bad,) = report["bad_images"]
    assert bad["file"].endswith("n00000001_bomb.JPEG") and "zip bomb" in bad["reason"]
    skipped = {p["file"].rsplit("/", 1)[-1]: p["reason"] for p in report["problems"]}
    assert "link" in skipped["n00000001_link.JPEG"] and "'..'" in skipped["escape.JPEG"]
    assert "absolute" in skipped["n00000001_absolute.JPEG"]
    assert sorted(os.listdir(tmp_path)) == ["manual", "tfds"]
    assert not (tmp_path.parent / "escape.JPEG").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_zip_bomb_member_is_read_in_bounded_memory(tiny_archives, tmp_path):
    manual_dir = _hostile_kaggle_zip(tiny_archives, tmp_path, bomb_bytes=3 << 29)
    assert (manual_dir / _kaggle.ZIP_NAME).stat().st_size < 16 << 20
    script = ("import resource, sys\n"
              "from bwtf.data import zip_archive\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "refs = list(zip_archive.iter_directory(sys.argv[1], []))\n"
              "errors = 0\n"
              "with open(sys.argv[1], 'rb') as raw:\n"
              "    for ref in refs:\n"
              "        try:\n"
              "            zip_archive.read_member(raw, ref, 128 << 20)\n"
              "        except zip_archive.ZipError:\n"
              "            errors += 1\n"
              "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, errors)\n")
    done = subprocess.run([sys.executable, "-c", script, str(manual_dir / _kaggle.ZIP_NAME)], capture_output=True,
                          text=True, timeout=500, check=True)
    growth, errors = map(int, done.stdout.split())
    assert errors == 1 and growth < 64, f"a 1.5 GiB zip bomb member grew the peak RSS by {growth} MiB"


def test_a_truncated_zip_is_one_clear_error(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy("kaggle")
    path = manual_dir / _kaggle.ZIP_NAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(builder_lib.ManualDirError, match="cannot be read as a zip .*re-download or re-copy"):
        tools.build(manual_dir, tmp_path / "tfds")
    assert not (tmp_path / "tfds").exists()


def test_the_unzipped_tree_skips_and_reports_links(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy("kaggle-tree")
    train = manual_dir / _TRAIN
    (train / "n00000001" / "n00000001_passwd.JPEG").symlink_to("/etc/passwd")
    (manual_dir / "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000099.JPEG").symlink_to("/etc/passwd")
    summary = tools.build(manual_dir, tmp_path / "tfds")
    assert summary.examples == {"train": 40, "validation": 10}
    text = (tmp_path / "tfds").joinpath(*summary.dataset_name.split("/"), "1.0.0", "bad_images.json").read_text()
    assert "root:" not in text and "n00000001_passwd.JPEG" in text and "ILSVRC2012_val_00000099" in text

"""Writes a small real-data ImageNet-style archive for the demo and the tests.

    python -m bwtf.data.sample_archive --out=/tmp/manual [--layout=ilsvrc2012|fall11|extracted|kaggle|kaggle-tree]
        [--source=DIR] [--images_per_class=N]

By default the images are scikit-learn's bundled handwritten digits (1,797
real scans, no network needed), upscaled to 64x64, encoded as RGB JPEG and
grouped into 10 synset-like classes ``n00000000`` ("digit zero") to
``n00000009`` (WordNet has no such offsets, so they never clash with real
synsets). Each image gets a bounding-box XML around its ink. With
``--source=DIR`` the images are instead the real JPEG files ``<synset>_*.JPEG``
of DIR, stored byte for byte, each with a box covering the whole image.

Every fifth digit of each class goes to validation (1,442 train and 355
validation images); with ``--source``, where a class may hold a single image,
every fifth file in name order does. The output is
byte-for-byte deterministic: fixed tar metadata and gzip timestamps.
Deliberately left out: test splits, devkit files and damaged images (tests
build those themselves).
"""
import dataclasses
import functools
import gzip
import io
import pathlib
import re
import shutil
import tarfile
import tempfile
import zipfile

from absl import flags

import bwtf
from bwtf import program

LAYOUTS = ("ilsvrc2012", "fall11", "extracted", "kaggle", "kaggle-tree")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_UPSCALE = 8  # 8x8 digits -> 64x64 images
_VALIDATION_EVERY = 5
_SYNSET_FILE = re.compile(r"^(n\d{8})_(.*)\.jpe?g$", re.IGNORECASE)

# The name of Kaggle's download, which the builder's plan looks for in manual_dir.
_KAGGLE_ZIP_NAME = "imagenet-object-localization-challenge.zip"


class SampleArchiveError(bwtf.UserError, ValueError):
    """The requested sample archive cannot be written (bad layout, source or output)."""


@dataclasses.dataclass(frozen=True)
class SampleImage:
    synset: str
    stem: str  # file name without extension, e.g. "n00000003_17"
    jpeg: bytes
    width: int
    height: int
    box: tuple  # (xmin, ymin, xmax, ymax) in pixels
    is_validation: bool


def digit_synset(digit):
    return f"n{digit:08d}"


def _digit_images(limit):
    import numpy as np
    import sklearn.datasets
    import tensorflow as tf

    digits = sklearn.datasets.load_digits()
    images, per_class = [], {}
    for index, (scan, digit) in enumerate(zip(digits.images, digits.target)):
        position = per_class[digit] = per_class.get(digit, -1) + 1
        if limit is not None and position >= limit:
            continue
        ink = np.kron(scan, np.ones((_UPSCALE, _UPSCALE))) / 16.0
        gray = np.round(255.0 * (1.0 - ink)).astype(np.uint8)
        jpeg = tf.io.encode_jpeg(np.stack([gray] * 3, axis=-1), quality=90).numpy()
        rows, cols = np.nonzero(scan)
        box = (int(cols.min()) * _UPSCALE, int(rows.min()) * _UPSCALE,
               (int(cols.max()) + 1) * _UPSCALE, (int(rows.max()) + 1) * _UPSCALE)
        synset = digit_synset(int(digit))
        images.append(SampleImage(synset, f"{synset}_{index}", jpeg, gray.shape[1], gray.shape[0], box,
                                  position % _VALIDATION_EVERY == _VALIDATION_EVERY - 1))
    words = {digit_synset(d): f"digit {word}" for d, word in enumerate(DIGIT_WORDS)}
    return images, words


def _source_images(source):
    from bwtf.data import images as image_lib

    source = pathlib.Path(source)
    if not source.is_dir():
        raise SampleArchiveError(f"--source {source} is not a directory; expected a folder of <synset>_*.JPEG files")
    matches = []
    for path in sorted(source.iterdir()):
        match = _SYNSET_FILE.match(path.name)
        if match and path.is_file():
            matches.append((match.group(1), match.group(2), path))
    if not matches:
        raise SampleArchiveError(f"--source {source} has no files named <synset>_*.JPEG (e.g. n01440764_tench.JPEG)")
    images, words, per_synset = [], {}, {}
    for index, (synset, rest, path) in enumerate(matches):
        data = path.read_bytes()
        try:
            info = image_lib.inspect(data)
        except image_lib.BadImageError as error:
            raise SampleArchiveError(f"--source file {path} is not a usable image: {error}") from None
        number = per_synset[synset] = per_synset.get(synset, -1) + 1
        words.setdefault(synset, rest.replace("_", " "))
        images.append(SampleImage(synset, f"{synset}_{number}", data, info.width, info.height,
                                  (0, 0, info.width, info.height), index % _VALIDATION_EVERY == _VALIDATION_EVERY - 1))
    return images, words


def _bbox_xml(image, name):
    xmin, ymin, xmax, ymax = image.box
    return (f"<annotation><folder>{image.synset}</folder><filename>{name}</filename>"
            f"<size><width>{image.width}</width><height>{image.height}</height><depth>3</depth></size>"
            f"<object><name>{image.synset}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>\n").encode()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(members, compress=False):
    """A tar (or .tar.gz with a fixed timestamp) of (name, data) pairs, as bytes."""
    buffer = io.BytesIO()
    sink = gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) if compress else buffer
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            _add(tar, name, data)
    if compress:
        sink.close()
    return buffer.getvalue()


def _by_synset(images):
    grouped = {}
    for image in images:
        grouped.setdefault(image.synset, []).append(image)
    return sorted(grouped.items())


def _write_ilsvrc2012(out, images, words):
    train = [i for i in images if not i.is_validation]
    val = [i for i in images if i.is_validation]
    inner = [(f"{s}.tar", _tar_bytes((f"{i.stem}.JPEG", i.jpeg) for i in group)) for s, group in _by_synset(train)]
    (out / "ILSVRC2012_img_train.tar").write_bytes(_tar_bytes(inner))
    val_names = [f"ILSVRC2012_val_{n:08d}" for n in range(1, len(val) + 1)]
    (out / "ILSVRC2012_img_val.tar").write_bytes(_tar_bytes((f"{n}.JPEG", i.jpeg) for n, i in zip(val_names, val)))
    (out / "ILSVRC2012_bbox_train_v2.tar.gz").write_bytes(
        _tar_bytes(((f"{i.synset}/{i.stem}.xml", _bbox_xml(i, i.stem)) for i in train), compress=True))
    (out / "ILSVRC2012_bbox_val_v3.tgz").write_bytes(
        _tar_bytes(((f"val/{n}.xml", _bbox_xml(i, n)) for n, i in zip(val_names, val)), compress=True))
    rows = ["ImageId,PredictionString"] + [f"{n},{i.synset} {' '.join(map(str, i.box))}"
                                           for n, i in zip(val_names, val)]
    (out / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (out / "LOC_synset_mapping.txt").write_text("".join(f"{s} {w}\n" for s, w in sorted(words.items())))


def _write_split_lists(out, images, words):
    (out / "words.txt").write_text("".join(f"{s}\t{w}\n" for s, w in sorted(words.items())))
    for name, is_validation in (("train_list.txt", False), ("validation_list.txt", True)):
        lines = sorted(f"{i.synset} {i.stem}\n" for i in images if i.is_validation == is_validation)
        (out / name).write_text("".join(lines))


def _write_fall11(out, images, words):
    groups = _by_synset(images)
    inner = [(f"{s}.tar", _tar_bytes((f"{i.stem}.JPEG", i.jpeg) for i in group)) for s, group in groups]
    (out / "Images.tar").write_bytes(_tar_bytes(inner))
    notes = [(f"{s}.tar.gz", _tar_bytes(((f"Annotation/{s}/{i.stem}.xml", _bbox_xml(i, i.stem)) for i in group),
                                        compress=True)) for s, group in groups]
    (out / "Annotation.tar.gz").write_bytes(_tar_bytes(notes, compress=True))
    _write_split_lists(out, images, words)


def _write_extracted(out, images, words):
    for image in images:
        for folder, name, data in ((out / image.synset, f"{image.stem}.JPEG", image.jpeg),
                                   (out / "Annotation" / image.synset, f"{image.stem}.xml", _bbox_xml(image, image.stem))):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    _write_split_lists(out, images, words)


def _kaggle_members(images, words):
    """(name, bytes) of the Kaggle download, in its own layout; the validation names are the ILSVRC2012 ones."""
    train = [i for i in images if not i.is_validation]
    val = [i for i in images if i.is_validation]
    val_names = [f"ILSVRC2012_val_{n:08d}" for n in range(1, len(val) + 1)]
    members = [(f"ILSVRC/Data/CLS-LOC/train/{i.synset}/{i.stem}.JPEG", i.jpeg) for i in train]
    members += [(f"ILSVRC/Annotations/CLS-LOC/train/{i.synset}/{i.stem}.xml", _bbox_xml(i, i.stem)) for i in train]
    members += [(f"ILSVRC/Data/CLS-LOC/val/{n}.JPEG", i.jpeg) for n, i in zip(val_names, val)]
    members += [(f"ILSVRC/Annotations/CLS-LOC/val/{n}.xml", _bbox_xml(i, n)) for n, i in zip(val_names, val)]
    members += [(f"ILSVRC/Data/CLS-LOC/test/ILSVRC2012_test_{n:08d}.JPEG", i.jpeg) for n, i in enumerate(val[:2], 1)]
    rows = ["ImageId,PredictionString"] + [f"{n},{i.synset} {' '.join(map(str, i.box))}"
                                           for n, i in zip(val_names, val)]
    members += [("LOC_val_solution.csv", ("\n".join(rows) + "\n").encode()),
                ("LOC_synset_mapping.txt", "".join(f"{s} {w}\n" for s, w in sorted(words.items())).encode()),
                ("LOC_sample_submission.csv", b"ImageId,PredictionString\n")]
    return members


def _write_kaggle(out, images, words):

    with zipfile.ZipFile(out / _KAGGLE_ZIP_NAME, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in _kaggle_members(images, words):
            bundle.writestr(zipfile.ZipInfo(name, date_time=(2019, 1, 1, 0, 0, 0)), data,
                            compress_type=zipfile.ZIP_DEFLATED)


def _write_kaggle_tree(out, images, words):
    for name, data in _kaggle_members(images, words):
        path = out.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


_WRITERS = {"ilsvrc2012": _write_ilsvrc2012, "fall11": _write_fall11, "extracted": _write_extracted,
            "kaggle": _write_kaggle, "kaggle-tree": _write_kaggle_tree}


def write_sample_archive(out_dir, layout="ilsvrc2012", source=None, images_per_class=None):
    """Writes the sample archive into ``out_dir`` and returns it (the manual_dir).

    ``images_per_class`` keeps only the first N digits of each class (tiny
    archives for dummy_data); it does not apply to ``source``.

    ``out_dir`` must not exist or be empty. The files appear all at once: they
    are written into a temporary sibling folder that is then renamed.
    """
    if layout not in _WRITERS:
        raise SampleArchiveError(f"layout {layout!r} is unknown; expected one of {', '.join(LAYOUTS)}")
    out = pathlib.Path(out_dir).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SampleArchiveError(f"--out {out} already exists and is not an empty directory; choose a new path")
    if images_per_class is not None and (not isinstance(images_per_class, int) or images_per_class < 1):
        raise SampleArchiveError(f"images_per_class must be a positive integer, found {images_per_class!r}")
    images, words = _source_images(source) if source else _digit_images(images_per_class)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a shared manual_dir must be readable
    try:
        _WRITERS[layout](staging, images, words)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(out)


def main(args, holders):
    del args  # every setting is a flag
    out, layout, source, images_per_class = (holder.value for holder in holders)
    try:
        manual_dir = write_sample_archive(out, layout=layout, source=source, images_per_class=images_per_class)
    except OSError as error:
        raise SampleArchiveError(f"cannot write the sample archive to {out}: {error}") from None
    print(f"wrote a {layout} sample archive to {manual_dir}")


def run():
    # Defined only when the program runs: importing write_sample_archive must
    # not claim generic flag names such as --out in the importer's process.
    from bwtf.data import _sample_archive_flags

    holders = _sample_archive_flags.define(LAYOUTS)
    flags.mark_flag_as_required("out")
    program.run(functools.partial(main, holders=holders), program.Program(
        name="python -m bwtf.data.sample_archive", doc=__doc__,
        usage="python -m bwtf.data.sample_archive --out=DIR [flags]", flag_groups=(("Archive", holders),)))


if __name__ == "__main__":
    run()

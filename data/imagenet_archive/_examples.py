"""Turns one unit of work into examples; the same code runs sequentially and in Beam.

A unit of work is a picklable item that names where its images are (a synset
tar by offset inside an outer tar, a synset folder, or a chunk of members of
the flat validation tar) and carries everything else it needs (label, words,
boxes), so any process on any node can run it with nothing but read access to
manual_dir. Images that cannot be stored are written, per item, to a small
JSON part file in ``report_dir``; the builder merges the parts at the end.
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import tarfile
from typing import Optional

from etils import epath
import tensorflow_datasets as tfds

from bwtf.data import annotations
from bwtf.data import archive
from bwtf.data import images
from bwtf.data.imagenet_archive import _sources


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which images of one class go into one split, decided from the sorted names.

    ``split_stems``: the stems listed for this split (None: no list).
    ``holdout``: (fraction, want_validation) when no list exists.
    ``subset_stems``: the user's file-list subset (None: everything).
    ``images_per_class``: keep the first N names in sorted order (None: all).
    """

    split_stems: Optional[frozenset] = None
    holdout: Optional[tuple] = None
    subset_stems: Optional[frozenset] = None
    images_per_class: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ClassItem:
    """All images of one synset: a tar at (offset, size) of ``path``, or a folder (size -1)."""

    split: str
    index: int
    synset: str
    label: int
    label_text: str
    path: str
    offset: int
    size: int
    selection: Selection
    boxes: dict


@dataclasses.dataclass(frozen=True)
class ChunkItem:
    """Members of a flat tar whose labels are already known: (MemberRef, synset, label, words)."""

    split: str
    index: int
    path: str
    members: tuple
    boxes: dict


def holdout_count(total, fraction):
    """How many of ``total`` images a class holds out: at least one when it has two or more."""
    if total < 2 or fraction <= 0:
        return 0
    return min(total - 1, max(1, round(total * fraction)))


def select(names, selection):
    """The names (sorted) of one class that the selection keeps."""
    names = sorted(names)
    if selection.split_stems is not None:
        names = [n for n in names if _sources.stem(n) in selection.split_stems]
    elif selection.holdout is not None:
        fraction, want_validation = selection.holdout
        # A hash ranking picks the same images whatever order the archive has.
        ranked = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
        held_out = set(ranked[: holdout_count(len(names), fraction)])
        names = [n for n in names if (n in held_out) == want_validation]
    if selection.subset_stems is not None:
        names = [n for n in names if _sources.stem(n) in selection.subset_stems]
    if selection.images_per_class is not None:
        names = names[: selection.images_per_class]
    return names


class _FolderClass:
    def __init__(self, folder):
        self.folder, self.unsafe = folder, []

    def names(self):
        return [entry.name for entry in os.scandir(self.folder) if entry.is_file()]

    def read(self, name):
        with open(os.path.join(self.folder, name), "rb") as image:
            return image.read()


class _TarClass:
    def __init__(self, region):
        self._region, self._refs = region, {}
        self.unsafe = region.unsafe

    def names(self):
        for ref in self._region.members():
            self._refs.setdefault(archive.base_name(ref.name), ref)
        return list(self._refs)

    def read(self, name):
        return self._region.read(self._refs[name])


@contextlib.contextmanager
def _open_class(item):
    if item.size < 0:
        yield _FolderClass(item.path)
    else:
        with archive.TarRegion(item.path, item.offset, item.size) as region:
            yield _TarClass(region)


class _Report:
    """What one item could not use; written as a JSON part file when not empty."""

    def __init__(self):
        self.bad_images, self.skipped_members, self.reencoded = [], [], []

    def write(self, report_dir, item):
        if not (self.bad_images or self.skipped_members or self.reencoded):
            return
        # report_dir lives in the TFDS data_dir, which may be gs://..., hence epath.
        folder = epath.Path(report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{item.split}-{item.index:06d}.json.tmp"
        partial.write_text(json.dumps(vars(self)), encoding="utf-8")
        partial.rename(folder / f"{item.split}-{item.index:06d}.json")  # a retried Beam bundle replaces it


def _example(split, source, member_name, data, labels, boxes, report):
    """(key, example) for one image, or None when it is damaged (then reported)."""
    synset, label, label_text = labels
    try:
        image = images.to_storable_jpeg(data)
    except images.BadImageError as error:
        report.bad_images.append({"split": split, "file": source, "reason": str(error)})
        return None
    if image.conversion:
        report.reencoded.append({"split": split, "file": source, "conversion": image.conversion})
    file_name = archive.base_name(member_name)
    annotation = boxes.get(_sources.stem(file_name))
    bboxes = annotations.normalized_boxes(annotation, image.width, image.height) if annotation else []
    return f"{synset}/{file_name}", {
        "image": image.jpeg,
        "label": label,
        "synset": synset,
        "label_text": label_text,
        "file_name": file_name,
        "bboxes": [tfds.features.BBox(*box) for box in bboxes],
    }


def _class_examples(item, report):
    where = item.path if item.size < 0 else f"{item.path}:{item.synset}"
    labels = (item.synset, item.label, item.label_text)
    try:
        with _open_class(item) as images_of_class:
            for name in select(images_of_class.names(), item.selection):
                example = _example(item.split, f"{where}/{name}", name, images_of_class.read(name), labels,
                                   item.boxes, report)
                if example:
                    yield example
            report.skipped_members.extend({"file": f"{where}/{m.name}", "reason": m.reason}
                                          for m in images_of_class.unsafe)
    except tarfile.ReadError as error:
        # A damaged synset tar costs its (remaining) images, not the build.
        report.bad_images.append({"split": item.split, "file": where,
                                  "reason": f"synset tar unreadable, its remaining images are left out: {error}"})


def _chunk_examples(item, report):
    with archive.TarRegion(item.path) as region:
        for ref, *labels in item.members:
            source = f"{item.path}:{ref.name}"
            example = _example(item.split, source, ref.name, region.read(ref), labels, item.boxes, report)
            if example:
                yield example


def examples_of_item(item, report_dir):
    """Yields (key, example) for every usable image of ``item``; reports the rest."""
    report = _Report()
    if isinstance(item, ChunkItem):
        yield from _chunk_examples(item, report)
    else:
        yield from _class_examples(item, report)
    report.write(report_dir, item)

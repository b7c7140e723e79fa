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

import bwtf
from bwtf.data import annotations
from bwtf.data import archive
from bwtf.data import images
from bwtf.data import zip_archive
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
    typical_tars: tuple = ()  # (offset, size) of synset tars of median size in ``path``, for loss estimates
    part: tuple = (0, 1)  # (k, n): this item is the k-th of n slices of the class's selected images


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


MAX_IMAGE_BYTES = 128 << 20  # the largest ImageNet JPEG is about 15 MB
# ILSVRC2012's train tar: 138 GB for 1,281,167 images. Stands in for the mean
# image footprint of a synset tar none of whose members can be read.
_TYPICAL_IMAGE_BYTES = 110_000


class _FolderClass:
    """The images of one folder of the extracted layout; links and special files are reported, never read."""

    def __init__(self, folder):
        self.folder, self.unsafe = folder, []
        self.damage = None

    def names(self):
        names = []
        for entry in os.scandir(self.folder):
            if entry.is_symlink():
                self.unsafe.append(archive.UnsafeMember(entry.name, "symbolic link ignored"))
            elif not entry.is_file(follow_symlinks=False):
                if not entry.is_dir(follow_symlinks=False):
                    self.unsafe.append(archive.UnsafeMember(entry.name, "FIFO, socket or device ignored"))
            elif archive.unsafe_name_reason(entry.name):
                self.unsafe.append(archive.UnsafeMember(entry.name, archive.unsafe_name_reason(entry.name)))
            else:
                names.append(entry.name)
        return names

    def read(self, name):
        return archive.read_regular_file(os.path.join(self.folder, name), MAX_IMAGE_BYTES)


class _TarClass:
    """The images of one synset tar; a second member of the same file name is reported, not used."""

    def __init__(self, region):
        self._region, self._refs = region, {}
        self.unsafe = region.unsafe
        self.damage = None
        self.images_listed = 0

    def names(self):
        refs = self._region.members()
        self.damage, self.images_listed = self._region.damage, len(refs)
        for ref in refs:
            name = archive.base_name(ref.name)
            if name in self._refs:
                self.unsafe.append(archive.UnsafeMember(ref.name, "another member has the same file name; "
                                                                  "only the first is used"))
            else:
                self._refs[name] = ref
        return list(self._refs)

    def read(self, name):
        ref = self._refs[name]
        if ref.size > MAX_IMAGE_BYTES:
            raise images.BadImageError(f"{ref.size} bytes, above the limit of {MAX_IMAGE_BYTES} bytes for an image")
        return self._region.read(ref)

    def lost_estimate(self, item):
        """About how many images the damage cost.

        A tar of median size beside it (``item.typical_tars``) says how many
        images a synset tar holds; scaled by this tar's size unless this tar
        was cut short (then its real size is unknown). Without one, the bytes
        left unread divided by the mean image footprint.
        """
        damage, region_size = self.damage, self._region.size
        typical = [(offset, size) for offset, size in item.typical_tars if offset != item.offset][:1]
        if typical:
            offset, size = typical[0]
            with archive.TarRegion(item.path, offset, size) as sibling:
                count = len(sibling.members())
            expected = count if damage.cut else count * region_size / max(1, size)
            return max(1, round(expected - self.images_listed))
        footprint = self._region.listed_bytes / self.images_listed if self.images_listed else _TYPICAL_IMAGE_BYTES
        return max(1, round((region_size - max(self._region.listed_bytes, damage.offset)) / footprint))


@contextlib.contextmanager
def _open_class(item):
    if item.size < 0:
        yield _FolderClass(item.path)
    else:
        with archive.TarRegion(item.path, item.offset, item.size) as region:
            yield _TarClass(region)


class _Report:
    """What one item could not use, and box corrections; written as a JSON part file when not empty."""

    def __init__(self):
        self.bad_images, self.skipped_members, self.reencoded = [], [], []
        self.counts = {}

    def count(self, what, number=1):
        if number:
            self.counts[what] = self.counts.get(what, 0) + number

    def write(self, report_dir, item):
        if not (self.bad_images or self.skipped_members or self.reencoded or self.counts):
            return
        # report_dir lives in the TFDS data_dir, which may be gs://..., hence epath.
        folder = epath.Path(report_dir)
        folder.mkdir(parents=True, exist_ok=True)
        # A retried Beam bundle replaces it.
        write_text_atomically(folder / f"{item.split}-{item.index:06d}.json", json.dumps(vars(self)))


def write_text_atomically(path, text):
    """Replaces the file ``path`` (an epath: local, or gs://... under a TFDS data_dir) with ``text``.

    Local: ``bwtf.write_atomically`` (fsynced, umask kept, no link followed at
    the file). Object stores: one write, which is atomic per object there;
    their rename is a copy and a delete, so a temporary file would add nothing.
    """
    if "://" in os.fspath(path):
        path.write_text(text, encoding="utf-8")
    else:
        bwtf.write_atomically(os.fspath(path), text)


def _boxes_of(annotation, synset, image, report):
    """The image's normalized boxes: its own synset's only, corrections counted in the report."""
    if annotation is None:
        return []
    annotation, dropped = annotations.of_synset(annotation, synset)
    report.count("boxes_of_other_synsets_dropped", dropped)
    report.count("boxes_with_reversed_corners_swapped", annotations.reversed_corners(annotation))
    return annotations.normalized_boxes(annotation, image.width, image.height)


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
    bboxes = _boxes_of(boxes.get(_sources.stem(file_name)), synset, image, report)
    return f"{synset}/{file_name}", {
        "image": image.jpeg,
        "label": label,
        "synset": synset,
        "label_text": label_text,
        "file_name": file_name,
        "bboxes": [tfds.features.BBox(*box) for box in bboxes],
    }


def _read_image(images_of_class, name, split, source, report):
    try:
        return images_of_class.read(name)
    except (OSError, tarfile.ReadError, images.BadImageError) as error:
        report.bad_images.append({"split": split, "file": source, "reason": str(error)})
        return None


def _class_examples(item, report):
    where = item.path if item.size < 0 else f"{item.path}:{item.synset}"
    labels = (item.synset, item.label, item.label_text)
    try:
        with _open_class(item) as images_of_class:
            for name in _part_of(select(images_of_class.names(), item.selection), item.part):
                data = _read_image(images_of_class, name, item.split, f"{where}/{name}", report)
                example = None if data is None else _example(
                    item.split, f"{where}/{name}", name, data, labels, item.boxes, report)
                if example:
                    yield example
            if item.part[0] == 0:  # every slice sees the same listing; the first reports it
                report.skipped_members.extend({"file": f"{where}/{m.name}", "reason": m.reason}
                                              for m in images_of_class.unsafe)
                if images_of_class.damage:
                    _report_damage(item, where, images_of_class, report)
    except (tarfile.ReadError, OSError) as error:
        # Not even the first header is readable: every image of the tar is lost.
        if item.part[0]:
            return
        report.bad_images.append({"split": item.split, "file": where, "damaged_archive": True,
                                  "images": _estimate_unreadable(item),
                                  "reason": f"synset tar unreadable, all its images are left out: {error}"})


def _part_of(names, part):
    """The k-th of n contiguous slices of the sorted selected names."""
    k, n = part
    return names[k * len(names) // n : (k + 1) * len(names) // n]


def _estimate_unreadable(item):
    return max(1, round(item.size / _TYPICAL_IMAGE_BYTES))


def _report_damage(item, where, tar_class, report):
    lost = tar_class.lost_estimate(item)
    report.bad_images.append({
        "split": item.split, "file": where, "damaged_archive": True, "images": lost,
        "reason": f"synset tar damaged: {tar_class.damage.reason}; the {tar_class.images_listed} images before "
                  f"the damage are used, about {lost} after it are lost"})


@contextlib.contextmanager
def _member_reader(path):
    """A function ref -> bytes for the members of a ChunkItem's ``path``: a tar, a zip or a folder."""
    if os.path.isdir(path):
        yield lambda ref: archive.read_regular_file(os.path.join(path, ref.name), MAX_IMAGE_BYTES)
    elif path.endswith(".zip"):
        with open(path, "rb") as raw:
            yield lambda ref: zip_archive.read_member(raw, ref, MAX_IMAGE_BYTES)
    else:
        with archive.TarRegion(path) as region:
            yield region.read


def _chunk_examples(item, report):
    separator = os.sep if os.path.isdir(item.path) else ":"
    with _member_reader(item.path) as read:
        for ref, *labels in item.members:
            source = f"{item.path}{separator}{ref.name}"
            try:
                data = read(ref)
            except (OSError, tarfile.ReadError, zip_archive.ZipError) as error:
                report.bad_images.append({"split": item.split, "file": source, "reason": str(error)})
                continue
            example = _example(item.split, source, ref.name, data, labels, item.boxes, report)
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

"""Reads the Kaggle "ImageNet Object Localization Challenge" layout, as its zip or unzipped.

The zip (``imagenet-object-localization-challenge.zip``, about 155 GB) holds
``ILSVRC/Data/CLS-LOC/{train/<synset>/*.JPEG, val/*.JPEG, test/*.JPEG}``,
``ILSVRC/Annotations/CLS-LOC/{train/<synset>/*.xml, val/*.xml}`` and, at its
root, ``LOC_synset_mapping.txt``, ``LOC_val_solution.csv``,
``LOC_train_solution.csv`` and ``LOC_sample_submission.csv``. The zip is read
in place: its directory is streamed once (``bwtf.data.zip_archive``), the
side files and box XMLs are read member by member (each capped), and the
images are left to the work items, which read them by offset. A member name
is only ever a string. The unzipped tree is read from its folders, links
skipped and reported as in the extracted layout.

What it returns is plain data for ``_plan``: member lists per synset, the
validation members, words, validation labels (from LOC_val_solution.csv,
else the validation XMLs) and boxes. Deliberately left out: the test split
(no labels) and LOC_train_solution.csv (the same boxes as the train XMLs).
"""
import dataclasses
import os
import posixpath

from bwtf.data import archive
from bwtf.data import zip_archive
from bwtf.data.imagenet_archive import _sources

ZIP_NAME = "imagenet-object-localization-challenge.zip"
IMAGES = "ILSVRC/Data/CLS-LOC"
ANNOTATIONS = "ILSVRC/Annotations/CLS-LOC"
WORDS = "LOC_synset_mapping.txt"


@dataclasses.dataclass
class KaggleSources:
    """What the Kaggle layout holds; refs are zip_archive.ZipRef (zip) or archive.MemberRef (tree)."""

    container: str  # the zip, or the root of the unzipped tree
    train: dict  # synset -> [ZipRef] (zip) or the synset's folder path (tree)
    val_path: str  # the zip, or the val folder
    val_refs: list
    words: dict
    val_labels: dict  # stem -> synset
    val_boxes: dict  # stem -> Annotation
    train_boxes: dict  # stem -> Annotation
    label_source: str


def is_tree(manual_dir):
    return os.path.isdir(os.path.join(manual_dir, *IMAGES.split("/")))


def _member_kind(name):
    """("train", synset) / ("val", None) / ("train_xml"|"val_xml", None) / ("side", base) / (None, None)."""
    parts = name.split("/")
    if name.startswith(IMAGES + "/train/") and len(parts) == 6 and _sources.SYNSET.match(parts[4]):
        return "train", parts[4]
    if name.startswith(IMAGES + "/val/") and len(parts) == 5:
        return "val", None
    if name.startswith(ANNOTATIONS + "/train/") and len(parts) == 6 and name.endswith(".xml"):
        return "train_xml", None
    if name.startswith(ANNOTATIONS + "/val/") and len(parts) == 5 and name.endswith(".xml"):
        return "val_xml", None
    if len(parts) == 1 or (len(parts) == 2 and parts[0] != "ILSVRC"):  # LOC_* at the root or one folder down
        return "side", parts[-1]
    return None, None


def _scan_zip(path, problems):
    """{kind: refs} from the zip's directory; a name seen twice keeps its first member and is reported."""
    unsafe, seen = [], set()
    found = {"train": {}, "val": [], "train_xml": [], "val_xml": [], "side": {}}
    try:
        for ref in zip_archive.iter_directory(path, unsafe):
            if ref.name in seen:
                problems.append((f"{path}:{ref.name}", "a second member of the same name; only the first is used"))
                continue
            seen.add(ref.name)
            kind, key = _member_kind(ref.name)
            if kind == "train":
                found["train"].setdefault(key, []).append(ref)
            elif kind == "side":
                found["side"].setdefault(key, ref)
            elif kind:
                found[kind].append(ref)
    except (zip_archive.ZipError, OSError) as error:
        raise _sources.ManualDirError(f"{path} cannot be read as a zip ({error}); re-download or re-copy it") \
            from None
    problems.extend((f"{path}:{m.name}", m.reason) for m in unsafe)
    return found


def _read_zip_text(raw, path, ref, what):
    try:
        data = zip_archive.read_member(raw, ref, _sources.MAX_TEXT_BYTES)
    except zip_archive.ZipError as error:
        raise _sources.ManualDirError(f"{what} {path}:{ref.name} cannot be read ({error})") from None
    return _sources.decode_text(data, f"{path}:{ref.name}", what)


def _zip_boxes(raw, path, refs, problems):
    boxes = {}
    for ref in refs:
        label = f"{path}:{ref.name}"
        try:
            data = zip_archive.read_member(raw, ref, archive.MAX_SIDE_MEMBER_BYTES)
        except zip_archive.ZipError as error:
            problems.append((label, str(error)))
            continue
        _sources.parse_into(boxes, problems, label, data)
    return _sources.without_sources(boxes)


def _labels_and_words(loc_text, words_text, loc_label, val_boxes):
    words = _sources.words_from_text(words_text) if words_text is not None else {}
    if loc_text is not None:
        labels, loc_boxes = _sources.loc_solution_text(loc_text, loc_label)
        return words, labels, val_boxes or loc_boxes, _sources.LOC_SOLUTION
    xml_labels = {s: a.names[0] for s, a in val_boxes.items() if a.names and _sources.SYNSET.match(a.names[0])}
    return words, xml_labels, val_boxes, "validation XMLs"


def read_zip(path, problems):
    """KaggleSources of the zip at ``path``."""
    found = _scan_zip(path, problems)
    with open(path, "rb") as raw:
        side = found["side"]
        loc = _read_zip_text(raw, path, side[_sources.LOC_SOLUTION], "validation solution") \
            if _sources.LOC_SOLUTION in side else None
        words_text = _read_zip_text(raw, path, side[WORDS], "synset words file") if WORDS in side else None
        train_boxes = _zip_boxes(raw, path, found["train_xml"], problems)
        val_boxes = _zip_boxes(raw, path, found["val_xml"], problems)
    words, labels, val_boxes, source = _labels_and_words(loc, words_text, f"{path}:{_sources.LOC_SOLUTION}",
                                                         val_boxes)
    return KaggleSources(path, found["train"], path, found["val"], words, labels, val_boxes, train_boxes, source)


def _val_files(folder, problems):
    """MemberRefs (name = file name) of the regular files of the flat val folder; links are reported."""
    refs = []
    if not os.path.isdir(folder):
        return refs
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        reason = "symbolic link ignored" if entry.is_symlink() else archive.unsafe_name_reason(entry.name)
        if not reason and not entry.is_file(follow_symlinks=False):
            reason = "" if entry.is_dir(follow_symlinks=False) else "FIFO, socket or device ignored"
            if not reason:
                continue
        if reason:
            problems.append((entry.path, reason))
        else:
            refs.append(archive.MemberRef(entry.name, 0, entry.stat(follow_symlinks=False).st_size))
    return refs


def read_tree(manual_dir, problems):
    """KaggleSources of the unzipped layout under ``manual_dir``."""
    images = os.path.join(manual_dir, *IMAGES.split("/"))
    notes = os.path.join(manual_dir, *ANNOTATIONS.split("/"))
    train_dir = os.path.join(images, "train")
    train = {}
    if os.path.isdir(train_dir):
        for entry in sorted(os.scandir(train_dir), key=lambda e: e.name):
            if not _sources.SYNSET.match(entry.name):
                continue
            if entry.is_symlink():
                problems.append((entry.path, "synset folder is a symbolic link; links are not followed"))
            elif entry.is_dir(follow_symlinks=False):
                train[entry.name] = entry.path
    val_dir = os.path.join(images, "val")
    val_refs = _val_files(val_dir, problems)
    train_boxes = _sources.read_folder_annotations(os.path.join(notes, "train"), problems)
    val_boxes = _sources.read_folder_annotations(os.path.join(notes, "val"), problems, flat=True)
    loc_path, words_path = os.path.join(manual_dir, _sources.LOC_SOLUTION), os.path.join(manual_dir, WORDS)
    loc = _sources.read_text(loc_path, "validation solution") if os.path.lexists(loc_path) else None
    words_text = _sources.read_text(words_path, "synset words file") if os.path.lexists(words_path) else None
    words, labels, val_boxes, source = _labels_and_words(loc, words_text, loc_path, val_boxes)
    return KaggleSources(manual_dir, train, val_dir, val_refs, words, labels, val_boxes, train_boxes, source)


def base_names(refs):
    return [posixpath.basename(ref.name) for ref in refs]

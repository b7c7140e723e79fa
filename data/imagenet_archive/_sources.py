"""Reads the side files of an ImageNet manual_dir: words, validation labels, boxes.

Each reader takes the manual_dir, returns plain dicts keyed by synset or by
image stem (file name without extension), and appends problems it tolerated
(a malformed XML, an unsafe tar member) to a ``problems`` list of
(file, reason) pairs instead of failing: a bad annotation must not cost images.
A side file that cannot be read at all (not UTF-8, not a tar.gz, cut short)
stops the build with ManualDirError naming it: building without the words or
boxes the user put there would be a silent loss.

Memory: side archives are streamed and only the members a reader wants are
read, each capped at ``archive.MAX_SIDE_MEMBER_BYTES``; text side files are
capped at ``MAX_TEXT_BYTES``. Side files may be symlinks (clusters share one
copy) but must resolve to regular files; inside an ``Annotation/`` folder links
are skipped and reported, like any link of the extracted tree.
"""
import csv
import io
import math
import os
import re
import tarfile

import bwtf
from bwtf.data import annotations
from bwtf.data import archive

SYNSET = re.compile(r"^n\d{8}$")
WORDS_FILES = ("LOC_synset_mapping.txt", "words.txt")
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
LOC_SOLUTION = "LOC_val_solution.csv"
BBOX_TRAIN = "ILSVRC2012_bbox_train_v2.tar.gz"
BBOX_VAL = "ILSVRC2012_bbox_val_v3.tgz"
FALL11_ANNOTATIONS = "Annotation.tar.gz"
MAX_TEXT_BYTES = 256 << 20  # words.txt is 2.6 MB, LOC_val_solution.csv 2.5 MB, a fall11 file list ~400 MB
_TFDS_VALIDATION_COUNT = 50000
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})$")
_DEVKIT_MEMBERS = ("ILSVRC2012_validation_ground_truth.txt", "meta.mat")


class ManualDirError(bwtf.UserError, ValueError):
    """manual_dir lacks what the builder needs, or holds a side file it cannot use."""


def stem(name):
    """'a/n01440764_10026.JPEG' -> 'n01440764_10026'."""
    return os.path.splitext(archive.base_name(name))[0]


def read_text(path, what):
    """The text of a side file (links followed, special files refused); ManualDirError otherwise."""
    try:
        data = archive.read_regular_file(os.path.realpath(path), MAX_TEXT_BYTES)
    except OSError as error:
        raise ManualDirError(f"{what} {path} cannot be read: {error.strerror or error}") from None
    return decode_text(data, path, what)


def decode_text(data, path, what):
    """``data`` decoded as UTF-8; ManualDirError naming the byte offset and line otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ManualDirError(
            f"{what} {path} is not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start} "
            f"(line {line}); convert it with iconv -f latin1 -t utf-8, or fix that line") from None


def words_from_text(text):
    words = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if parts and SYNSET.match(parts[0]):
            words[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return words


def read_words(manual_dir):
    """{synset: words} from LOC_synset_mapping.txt, words.txt or the devkit's meta.mat; {} when none exists."""
    for name in WORDS_FILES:
        path = os.path.join(manual_dir, name)
        if os.path.lexists(path):
            return words_from_text(read_text(path, "synset words file"))
    devkit = os.path.join(manual_dir, DEVKIT)
    if os.path.lexists(devkit):
        return {wnid: words for wnid, (_, words) in _devkit_synsets(devkit).items()}
    return {}


def _merge_annotation(boxes, problems, key, annotation, file_label):
    """Keeps every box of an image, whichever file holds it; two files for one image are reported."""
    earlier = boxes.get(key)
    if earlier is None:
        boxes[key] = (annotation, file_label)
        return
    previous, previous_label = earlier
    extra = [(box, name) for box, name in zip(annotation.boxes, annotation.names)
             if (box, name) not in set(zip(previous.boxes, previous.names))]
    boxes[key] = (annotations.Annotation(previous.width or annotation.width, previous.height or annotation.height,
                                         previous.boxes + tuple(b for b, _ in extra),
                                         previous.names + tuple(n for _, n in extra)), previous_label)
    problems.append((file_label, f"describes the same image as {previous_label}; the boxes of both are kept"))


def parse_into(boxes, problems, file_label, data):
    """Adds the annotation in ``data`` to ``boxes`` ({stem: (Annotation, first file)}); problems are appended."""
    try:
        _merge_annotation(boxes, problems, stem(file_label), annotations.parse(data), file_label)
    except annotations.AnnotationError as error:
        problems.append((file_label, str(error)))


def _unsafe_problems(problems, path, unsafe):
    problems.extend((f"{path}:{member.name}", member.reason) for member in unsafe)


def _is_xml(name):
    return name.endswith(".xml")


def without_sources(boxes):
    return {key: annotation for key, (annotation, _) in boxes.items()}


def read_tar_annotations(path, problems):
    """{stem: Annotation} from a (nested) tar(.gz) of XMLs; {} when ``path`` does not exist.

    Only ``.xml`` members are read (each at most archive.MAX_SIDE_MEMBER_BYTES).
    """
    boxes, unsafe = {}, []
    if not os.path.lexists(path):
        return boxes
    try:
        for outer_name, inner_name, data in archive.iter_nested_streams(
                os.path.realpath(path), unsafe, wanted=_is_xml):
            parse_into(boxes, problems, f"{path}:{inner_name or outer_name}", data)
    except (tarfile.ReadError, OSError) as error:
        raise ManualDirError(f"box archive {path} cannot be read ({error}); re-download or re-copy it, "
                             "or remove it to build without its boxes") from None
    _unsafe_problems(problems, path, unsafe)
    return without_sources(boxes)


def _link_problem(path):
    return (path, "a symbolic link; the extracted layout does not follow links")


def _read_xml_folder(folder, boxes, problems):
    """Parses every <folder>/*.xml into ``boxes``; links and special files are reported, never read."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not _is_xml(entry.name):
            continue
        try:
            data = archive.read_regular_file(entry.path, archive.MAX_SIDE_MEMBER_BYTES)
        except OSError as error:
            problems.append((entry.path, str(error) if isinstance(error, archive.UnsafeFileError)
                             else f"cannot be read: {error.strerror or error}"))
            continue
        parse_into(boxes, problems, entry.path, data)


def read_folder_annotations(folder, problems, flat=False):
    """{stem: Annotation} from <folder>/<synset>/*.xml (or <folder>/*.xml when ``flat``); links are reported."""
    boxes = {}
    if os.path.islink(folder):
        problems.append(_link_problem(folder))
    if not os.path.isdir(folder) or os.path.islink(folder):
        return boxes
    if flat:
        _read_xml_folder(folder, boxes, problems)
        return without_sources(boxes)
    for synset_entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if synset_entry.is_symlink():
            problems.append(_link_problem(synset_entry.path))
        elif synset_entry.is_dir(follow_symlinks=False):
            _read_xml_folder(synset_entry.path, boxes, problems)
    return without_sources(boxes)


def _devkit_synsets(path, members=None):
    """{wnid: (ILSVRC2012_ID, words)} from the devkit's meta.mat; ManualDirError when it is unusable."""
    members = members or _devkit_members(path)
    import scipy.io  # a base dependency; imported here so that only devkit builds pay for it

    try:
        synsets = scipy.io.loadmat(io.BytesIO(members["meta.mat"]), squeeze_me=True)["synsets"]
        return {str(entry["WNID"]): (int(entry["ILSVRC2012_ID"]),
                                     str(entry["words"]) if "words" in synsets.dtype.names else "")
                for entry in synsets}
    except (KeyError, ValueError, TypeError, IndexError, OverflowError) as error:
        raise ManualDirError(f"{path}: data/meta.mat holds no usable 'synsets' table "
                             f"({type(error).__name__}: {error}); remove the devkit to use another label source") \
            from None


def _devkit_members(path):
    members = {}
    try:
        with open(os.path.realpath(path), "rb") as raw:
            for name, data in archive.iter_stream(raw, [], wanted=lambda n: n.endswith(_DEVKIT_MEMBERS)):
                members[os.path.basename(name)] = data
    except (tarfile.ReadError, OSError) as error:
        raise ManualDirError(f"devkit {path} cannot be read ({error}); re-download it or remove it") from None
    if set(members) != set(_DEVKIT_MEMBERS):
        raise ManualDirError(f"{path} lacks data/ILSVRC2012_validation_ground_truth.txt or data/meta.mat "
                             f"(each at most {archive.MAX_SIDE_MEMBER_BYTES} bytes)")
    return members


def _devkit_labels(path):
    """{stem: synset} from the devkit's ground truth (ILSVRC2012 ids) and meta.mat."""
    members = _devkit_members(path)
    by_id = {number: wnid for wnid, (number, _) in _devkit_synsets(path, members).items()}
    try:
        ids = members["ILSVRC2012_validation_ground_truth.txt"].decode("ascii").split()
        return {f"ILSVRC2012_val_{number:08d}": by_id[int(i)] for number, i in enumerate(ids, start=1)}
    except (KeyError, ValueError) as error:
        raise ManualDirError(f"{path}: its ground truth ids do not map to synsets through meta.mat "
                             f"({type(error).__name__}: {error}); remove it to use another label source") from None


def _solution_boxes(path, line, tokens):
    objects = [tokens[i : i + 5] for i in range(0, len(tokens), 5)]
    try:
        pixels = tuple(tuple(float(v) for v in obj[1:]) for obj in objects)
    except ValueError:
        pixels = ()
    if not pixels or not all(math.isfinite(v) for box in pixels for v in box):
        raise ManualDirError(f"{path} line {line}: box coordinates must be finite numbers, found {' '.join(tokens)!r}")
    return annotations.Annotation(0, 0, pixels, tuple(obj[0] for obj in objects))


def _loc_solution(path):
    """({stem: synset}, {stem: Annotation in pixels}) from LOC_val_solution.csv."""
    return loc_solution_text(read_text(path, "validation solution"), path)


def loc_solution_text(text, path):
    """({stem: synset}, {stem: Annotation in pixels}) from the text of LOC_val_solution.csv found at ``path``."""
    labels, boxes = {}, {}
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise ManualDirError(f"{path}: expected the header 'ImageId,PredictionString', found "
                                 f"{','.join(reader.fieldnames or ()) or 'an empty file'}")
        for row in reader:
            tokens = (row["PredictionString"] or "").split()
            if not row["ImageId"] or not tokens:
                continue
            if not SYNSET.match(tokens[0]) or len(tokens) % 5:
                raise ManualDirError(f"{path} line {reader.line_num}: expected 'synset xmin ymin xmax ymax' "
                                     f"groups such as 'n01751748 10 20 300 400', found {row['PredictionString']!r}")
            labels[row["ImageId"]] = tokens[0]
            boxes[row["ImageId"]] = _solution_boxes(path, reader.line_num, tokens)
    except csv.Error as error:
        raise ManualDirError(f"{path} line {reader.line_num}: not a CSV file ({error})") from None
    return labels, boxes


def _tfds_labels(image_stems):
    """{stem: synset} from the list that ships with tensorflow-datasets (by image number)."""
    import tensorflow_datasets as tfds

    path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
    labels = path.read_text().split()
    result = {}
    for name in image_stems:
        match = _VAL_NAME.match(name)
        if match and 1 <= int(match.group(1)) <= min(len(labels), _TFDS_VALIDATION_COUNT):
            result[name] = labels[int(match.group(1)) - 1]
    return result


def validation_labels(manual_dir, image_stems, problems):
    """({stem: synset}, {stem: Annotation}, source) for the ILSVRC2012 validation images.

    Labels come from the first source that exists: the devkit, LOC_val_solution.csv,
    the validation XMLs, the list in tensorflow-datasets. Boxes come from the
    validation XMLs, else from LOC_val_solution.csv.
    """
    boxes = read_tar_annotations(os.path.join(manual_dir, BBOX_VAL), problems)
    loc_path = os.path.join(manual_dir, LOC_SOLUTION)
    loc_labels, loc_boxes = _loc_solution(loc_path) if os.path.lexists(loc_path) else ({}, {})
    boxes = boxes or loc_boxes
    devkit = os.path.join(manual_dir, DEVKIT)
    if os.path.lexists(devkit):
        return _devkit_labels(devkit), boxes, DEVKIT
    if loc_labels:
        return loc_labels, boxes, LOC_SOLUTION
    xml_labels = {s: a.names[0] for s, a in boxes.items() if a.names and SYNSET.match(a.names[0])}
    if xml_labels:
        return xml_labels, boxes, BBOX_VAL
    return _tfds_labels(image_stems), boxes, "tensorflow-datasets validation_labels.txt"


def read_stem_list(path, what):
    """{stem: synset or ""} from lines 'n01831360 n01831360_6692' (or just a file name)."""
    if not os.path.isfile(path):
        raise ManualDirError(f"{what} {path} does not exist; expected a text file of lines "
                             "'<synset> <image>' such as 'n01831360 n01831360_6692'")
    result = {}
    for number, line in enumerate(read_text(path, what).splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2 or (len(parts) == 2 and not SYNSET.match(parts[0])):
            raise ManualDirError(f"{what} {path} line {number}: expected '<synset> <image>' "
                                 f"such as 'n01831360 n01831360_6692', found {line.strip()!r}")
        result[stem(parts[-1])] = parts[0] if len(parts) == 2 else ""
    return result

"""Reads the side files of an ImageNet manual_dir: words, validation labels, boxes.

Each reader takes the manual_dir, returns plain dicts keyed by synset or by
image stem (file name without extension), and appends problems it tolerated
(a malformed XML, an unsafe tar member) to a ``problems`` list of
(file, reason) pairs instead of failing: a bad side file must not cost images.
"""
import csv
import io
import os
import re

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
_TFDS_VALIDATION_COUNT = 50000
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})$")


class ManualDirError(bwtf.UserError, ValueError):
    """manual_dir lacks what the builder needs, or holds a side file it cannot use."""


def stem(name):
    """'a/n01440764_10026.JPEG' -> 'n01440764_10026'."""
    return os.path.splitext(archive.base_name(name))[0]


def read_words(manual_dir):
    """{synset: words} from LOC_synset_mapping.txt or words.txt; {} when neither exists."""
    for name in WORDS_FILES:
        path = os.path.join(manual_dir, name)
        if os.path.exists(path):
            words = {}
            with open(path, encoding="utf-8") as lines:
                for line in lines:
                    parts = line.strip().split(None, 1)
                    if parts and SYNSET.match(parts[0]):
                        words[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
            return words
    return {}


def _parse_into(boxes, problems, file_label, data):
    try:
        boxes[stem(file_label)] = annotations.parse(data)
    except annotations.AnnotationError as error:
        problems.append((file_label, str(error)))


def _unsafe_problems(problems, path, unsafe):
    problems.extend((f"{path}:{member.name}", member.reason) for member in unsafe)


def read_tar_annotations(path, problems):
    """{stem: Annotation} from a (nested) tar(.gz) of XMLs; {} when ``path`` does not exist."""
    boxes, unsafe = {}, []
    if not os.path.exists(path):
        return boxes
    for outer_name, inner_name, data in archive.iter_nested_streams(path, unsafe):
        name = inner_name or outer_name
        if name.endswith(".xml"):
            _parse_into(boxes, problems, f"{path}:{name}", data)
    _unsafe_problems(problems, path, unsafe)
    return boxes


def read_folder_annotations(folder, problems):
    """{stem: Annotation} from <folder>/<synset>/*.xml (the extracted layout)."""
    boxes = {}
    if not os.path.isdir(folder):
        return boxes
    for synset in sorted(os.listdir(folder)):
        synset_dir = os.path.join(folder, synset)
        if not os.path.isdir(synset_dir):
            continue
        for name in sorted(os.listdir(synset_dir)):
            if name.endswith(".xml"):
                path = os.path.join(synset_dir, name)
                with open(path, "rb") as xml:
                    _parse_into(boxes, problems, path, xml.read())
    return boxes


def _devkit_labels(path):
    """{stem: synset} from the devkit's ground truth (ILSVRC2012 ids) and meta.mat."""
    members = {}
    with open(path, "rb") as raw:
        for name, data in archive.iter_stream(raw, []):
            if name.endswith(("validation_ground_truth.txt", "meta.mat")):
                members[os.path.basename(name)] = data
    if set(members) != {"ILSVRC2012_validation_ground_truth.txt", "meta.mat"}:
        raise ManualDirError(f"{path} lacks data/ILSVRC2012_validation_ground_truth.txt or data/meta.mat")
    try:
        import scipy.io  # Only the devkit's MATLAB file needs it.
    except ImportError:
        raise ManualDirError(f"reading {path} needs scipy (pip install scipy), or remove it to use "
                             f"{LOC_SOLUTION} or the tensorflow-datasets label list") from None
    try:
        synsets = scipy.io.loadmat(io.BytesIO(members["meta.mat"]), squeeze_me=True)["synsets"]
        by_id = {int(entry["ILSVRC2012_ID"]): str(entry["WNID"]) for entry in synsets}
        ids = members["ILSVRC2012_validation_ground_truth.txt"].decode().split()
        return {f"ILSVRC2012_val_{number:08d}": by_id[int(i)] for number, i in enumerate(ids, start=1)}
    except (KeyError, ValueError, TypeError, IndexError) as error:
        raise ManualDirError(f"{path}: its ground truth ids do not map to synsets through meta.mat "
                             f"({type(error).__name__}: {error}); remove it to use another label source") from None


def _loc_solution(path):
    """({stem: synset}, {stem: Annotation in pixels}) from LOC_val_solution.csv."""
    labels, boxes = {}, {}
    with open(path, newline="", encoding="utf-8") as rows:
        reader = csv.DictReader(rows)
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
            objects = [tokens[i : i + 5] for i in range(0, len(tokens), 5)]
            try:
                pixels = tuple(tuple(float(v) for v in obj[1:]) for obj in objects)
            except ValueError:
                raise ManualDirError(f"{path} line {reader.line_num}: box coordinates must be numbers, "
                                     f"found {row['PredictionString']!r}") from None
            boxes[row["ImageId"]] = annotations.Annotation(0, 0, pixels, tuple(obj[0] for obj in objects))
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
    loc_labels, loc_boxes = _loc_solution(loc_path) if os.path.exists(loc_path) else ({}, {})
    boxes = boxes or loc_boxes
    devkit = os.path.join(manual_dir, DEVKIT)
    if os.path.exists(devkit):
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
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 2 or (len(parts) == 2 and not SYNSET.match(parts[0])):
                raise ManualDirError(f"{what} {path} line {number}: expected '<synset> <image>' "
                                     f"such as 'n01831360 n01831360_6692', found {line.strip()!r}")
            result[stem(parts[-1])] = parts[0] if len(parts) == 2 else ""
    return result

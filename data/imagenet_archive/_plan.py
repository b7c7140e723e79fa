"""Detects the layout of manual_dir and plans the build as picklable work items.

Planning reads only tar headers and side files (words, labels, boxes); the
images themselves are read later by ``_examples``, item by item. The plan is a
pure function of manual_dir and the options, so every run, sequential or
parallel, yields the same items.
"""
import dataclasses
import os
import tarfile
from typing import Optional

from bwtf.data import archive
from bwtf.data.imagenet_archive import _examples
from bwtf.data.imagenet_archive import _kaggle
from bwtf.data.imagenet_archive import _sources

ILSVRC_TRAIN = "ILSVRC2012_img_train.tar"
ILSVRC_VAL = "ILSVRC2012_img_val.tar"
FALL11_IMAGES = ("Images.tar", "fall11_whole.tar")
SPLIT_LISTS = {"train": "train_list.txt", "validation": "validation_list.txt"}
CLASS_SETS = ("ilsvrc-1000", "present")
LAYOUTS = ("ilsvrc2012", "fall11", "kaggle", "kaggle-tree", "extracted")
_CHUNK = 256  # validation members per work item


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    class_set: str = "present"
    class_list: Optional[tuple] = None
    images_per_class: Optional[int] = None
    subset: Optional[dict] = None  # synset -> frozenset of stems, from a file list
    validation_fraction: float = 0.02


@dataclasses.dataclass
class Plan:
    layout: str
    class_names: list
    items: dict  # split name -> list of work items
    problems: list  # (file, reason) tolerated while planning
    label_source: str = ""
    listed_images: int = 0  # images a file list names among the selected classes (0: no file list)
    words: dict = dataclasses.field(default_factory=dict)  # synset -> words, from the words file or devkit


@dataclasses.dataclass(frozen=True)
class _ClassSource:
    synset: str
    path: str
    offset: int = 0
    size: int = -1  # -1: a folder


def ilsvrc_synsets():
    import tensorflow_datasets as tfds

    return tfds.core.tfds_path("datasets/imagenet2012/labels.txt").read_text().split()


def detect_layout(manual_dir):
    """The layout's name (one of LAYOUTS); ManualDirError naming everything looked for."""
    if not os.path.isdir(manual_dir):
        raise _sources.ManualDirError(f"manual_dir {manual_dir} is not a directory; pass the folder holding the archives")
    if any(os.path.isfile(os.path.join(manual_dir, n)) for n in (ILSVRC_TRAIN, ILSVRC_VAL)):
        return "ilsvrc2012"
    if any(os.path.isfile(os.path.join(manual_dir, n)) for n in FALL11_IMAGES):
        return "fall11"
    if os.path.isfile(os.path.join(manual_dir, _kaggle.ZIP_NAME)):
        return "kaggle"
    if _kaggle.is_tree(manual_dir):
        return "kaggle-tree"
    try:
        names = os.listdir(manual_dir)
    except OSError as error:
        raise _sources.ManualDirError(f"manual_dir {manual_dir} cannot be listed: {error.strerror}; "
                                      "check its permissions") from None
    if any(_sources.SYNSET.match(n) and os.path.isdir(os.path.join(manual_dir, n)) for n in names):
        return "extracted"
    raise _sources.ManualDirError(
        f"manual_dir {manual_dir} holds no ImageNet archive. Looked for: ILSVRC2012 layout "
        f"({ILSVRC_TRAIN} and/or {ILSVRC_VAL}); fall 2011 layout ({' or '.join(FALL11_IMAGES)}, with "
        f"optional {_sources.FALL11_ANNOTATIONS}, words.txt, {SPLIT_LISTS['train']}, {SPLIT_LISTS['validation']}); "
        f"Kaggle layout ({_kaggle.ZIP_NAME}, or its unzipped {_kaggle.IMAGES}/ and LOC_*.csv); "
        "extracted layout (folders <synset>/*.JPEG such as n01440764/, with optional Annotation/<synset>/*.xml). "
        f"Found: {', '.join(sorted(names)) or 'nothing'}.")


def _outer_members(path, problems):
    """The members of an outer tar; ManualDirError when it is unreadable or incomplete."""
    try:
        with archive.TarRegion(path) as outer:
            refs = outer.members()
    except (tarfile.ReadError, OSError) as error:
        raise _sources.ManualDirError(f"{error}; re-download or re-copy it") from None
    if outer.damage:  # a cut outer tar would silently lose every class after the cut
        raise _sources.ManualDirError(f"{path} is damaged: {outer.damage.reason}; re-download or re-copy it")
    problems.extend((f"{path}:{m.name}", m.reason) for m in outer.unsafe)
    return refs


def _tar_classes(path, problems):
    """One _ClassSource per '<synset>.tar' member of an outer tar."""
    refs = _outer_members(path, problems)
    classes = {}
    for ref in refs:
        synset = archive.base_name(ref.name)[: -len(".tar")] if ref.name.endswith(".tar") else ""
        if not _sources.SYNSET.match(synset):
            problems.append((f"{path}:{ref.name}", "not a per-synset tar named <synset>.tar; ignored"))
        elif synset in classes:
            raise _sources.ManualDirError(
                f"{path} holds two tars of synset {synset} (at bytes {classes[synset].offset} and {ref.offset}); "
                "one of them is a stray copy: rebuild the archive with one tar per synset")
        else:
            classes[synset] = _ClassSource(synset, path, ref.offset, ref.size)
    return list(classes.values())


def _class_names(present, options):
    if options.class_list is not None:
        names = sorted(set(options.class_list))
        if not names:
            raise _sources.ManualDirError("class_list is empty; list one synset per line, or leave it out "
                                          "to build every class")
        wrong = [n for n in names if not _sources.SYNSET.match(n)]
        if wrong:
            raise _sources.ManualDirError(f"class_list entries must be synsets like n01440764, found {wrong[:5]}")
        absent = [n for n in names if n not in present]
        if absent:
            raise _sources.ManualDirError(
                f"class_list names {len(absent)} synsets that manual_dir has no images of (e.g. {absent[:3]}); "
                "they would be empty classes: remove them from the list")
        if options.class_set == "ilsvrc-1000":
            outside = sorted(set(names) - set(ilsvrc_synsets()))
            if outside:
                raise _sources.ManualDirError(
                    f"class_list has {len(outside)} synsets outside the ILSVRC 1000 classes (e.g. {outside[:3]}); "
                    "use class_set='present' to allow any synset")
    elif options.class_set == "ilsvrc-1000":
        names = ilsvrc_synsets()
    else:
        names = sorted(present)
    if not set(names) & set(present):
        raise _sources.ManualDirError(
            f"none of the {len(present)} synsets found in manual_dir (e.g. {sorted(present)[:3]}) is in the "
            f"class set {options.class_set!r}{' restricted to class_list' if options.class_list else ''}; "
            "use class_set='present' for archives that are not ILSVRC 1000-class")
    return names


def _group_boxes(boxes):
    grouped = {}
    for image_stem, annotation in boxes.items():
        grouped.setdefault(image_stem.split("_")[0], {})[image_stem] = annotation
    return grouped


def _class_items(split, classes, names, words, boxes, selection_for):
    labels = {synset: index for index, synset in enumerate(names)}
    tars = sorted((c.size, c.offset) for c in classes if c.size >= 0)
    # Two tars of median size: the one that is not the damaged tar stands in for its lost contents.
    typical = tuple((offset, size) for size, offset in tars[len(tars) // 2 : len(tars) // 2 + 2])
    items = []
    for source in sorted(classes, key=lambda c: c.synset):
        if source.synset in labels:
            items.append(_examples.ClassItem(
                split, len(items), source.synset, labels[source.synset], words.get(source.synset, ""),
                source.path, source.offset, source.size, selection_for(source.synset), boxes.get(source.synset, {}),
                typical_tars=typical))
    return items


def group_stems(stem_synsets):
    """{synset: frozenset(stems)} from {stem: synset or ""}; "" collects stems listed without a synset."""
    grouped = {}
    for image_stem, synset in stem_synsets.items():
        grouped.setdefault(synset, set()).add(image_stem)
    return {synset: frozenset(stems) for synset, stems in grouped.items()}


def _stems_for(grouped, synset):
    """The stems of ``grouped`` that may belong to ``synset`` (its own, and those listed without one)."""
    return grouped.get(synset, frozenset()) | grouped.get("", frozenset())


def _subset_of(options, synset):
    return None if options.subset is None else _stems_for(options.subset, synset)


def _validation_chunks(path, refs, val_labels, val_boxes, names, words, options, problems):
    labels = {synset: index for index, synset in enumerate(names)}
    by_synset, file_names = {}, set()
    for ref in sorted(refs, key=lambda r: r.name):
        # The example key is synset/file name, so a second member of the
        # same name (in another folder of the tar) would collide with the first.
        if archive.base_name(ref.name) in file_names:
            problems.append((f"{path}:{ref.name}", "another member has the same file name; only the first is used"))
            continue
        file_names.add(archive.base_name(ref.name))
        image_stem = _sources.stem(ref.name)
        synset = val_labels.get(image_stem)
        if synset is None:
            problems.append((f"{path}:{ref.name}", "no validation label found; image left out"))
            continue
        subset = _subset_of(options, synset)
        if synset not in labels and options.class_list is None:
            problems.append((f"{path}:{ref.name}", f"its label {synset} is not one of the {len(labels)} classes "
                                                   f"(class_set {options.class_set!r}); image left out"))
        if synset not in labels or (subset is not None and image_stem not in subset):
            continue
        kept = by_synset.setdefault(synset, [])
        if options.images_per_class is None or len(kept) < options.images_per_class:
            kept.append(ref)
    members = sorted(((ref, s, labels[s], words.get(s, "")) for s, kept in by_synset.items() for ref in kept),
                     key=lambda member: member[0].name)
    chunks = []
    for start in range(0, len(members), _CHUNK):
        chunk = tuple(members[start : start + _CHUNK])
        boxes = {_sources.stem(m[0].name): val_boxes[_sources.stem(m[0].name)]
                 for m in chunk if _sources.stem(m[0].name) in val_boxes}
        chunks.append(_examples.ChunkItem("validation", len(chunks), path, chunk, boxes))
    return chunks


def _plan_ilsvrc(manual_dir, options):
    problems, items, source = [], {}, ""
    train_path, val_path = os.path.join(manual_dir, ILSVRC_TRAIN), os.path.join(manual_dir, ILSVRC_VAL)
    classes = _tar_classes(train_path, problems) if os.path.isfile(train_path) else []
    refs, val_labels, val_boxes = [], {}, {}
    if os.path.isfile(val_path):
        refs = _outer_members(val_path, problems)
        stems = [_sources.stem(r.name) for r in refs]
        val_labels, val_boxes, source = _sources.validation_labels(manual_dir, stems, problems)
    val_synsets = {val_labels[s] for s in map(_sources.stem, (r.name for r in refs)) if s in val_labels}
    train_synsets = {c.synset for c in classes}
    # A label source naming a synset the train archive lacks adds a class
    # without training images: kept (labels must follow the source), but reported.
    _validation_only_synsets(val_path, train_synsets, val_synsets, problems)
    present = train_synsets | val_synsets
    names = _class_names(present, options)
    words = _sources.read_words(manual_dir)
    if classes:
        boxes = _group_boxes(_sources.read_tar_annotations(os.path.join(manual_dir, _sources.BBOX_TRAIN), problems))
        selection_for = lambda synset: _examples.Selection(
            subset_stems=_subset_of(options, synset), images_per_class=options.images_per_class)
        items["train"] = _class_items("train", classes, names, words, boxes, selection_for)
    if refs:
        items["validation"] = _validation_chunks(val_path, refs, val_labels, val_boxes, names, words, options, problems)
    return Plan("ilsvrc2012", names, items, problems, f"validation labels from {source}" if source else "",
                words=words)


def _validation_only_synsets(path, train_synsets, val_synsets, problems):
    """Reports synsets the validation labels name that have no training images (see _plan_ilsvrc)."""
    if train_synsets:
        problems.extend((path, f"validation labels name {s}, which has no training images; it becomes a class "
                               "with validation images only") for s in sorted(val_synsets - train_synsets))


def _zip_train_chunks(sources, names, boxes, options, problems):
    """ChunkItems of the zip's train members, selected per class as a synset tar's would be."""
    labels = {synset: index for index, synset in enumerate(names)}
    members = []
    for synset in sorted(set(sources.train) & set(labels)):
        by_name = {}
        for ref in sources.train[synset]:
            if archive.base_name(ref.name) in by_name:
                problems.append((f"{sources.container}:{ref.name}", "another member has the same file name; "
                                                                    "only the first is used"))
            else:
                by_name[archive.base_name(ref.name)] = ref
        selection = _examples.Selection(subset_stems=_subset_of(options, synset),
                                        images_per_class=options.images_per_class)
        word = sources.words.get(synset, "")
        members += [(by_name[name], synset, labels[synset], word) for name in _examples.select(by_name, selection)]
    chunks = []
    for start in range(0, len(members), _CHUNK):
        chunk = tuple(members[start : start + _CHUNK])
        chunk_boxes = {_sources.stem(m[0].name): boxes[m[1]][_sources.stem(m[0].name)] for m in chunk
                       if _sources.stem(m[0].name) in boxes.get(m[1], {})}
        chunks.append(_examples.ChunkItem("train", len(chunks), sources.container, chunk, chunk_boxes))
    return chunks


def _plan_kaggle(manual_dir, layout, options):
    problems, items = [], {}
    if layout == "kaggle":
        sources = _kaggle.read_zip(os.path.join(manual_dir, _kaggle.ZIP_NAME), problems)
    else:
        sources = _kaggle.read_tree(manual_dir, problems)
    val_synsets = {sources.val_labels[s] for s in (_sources.stem(r.name) for r in sources.val_refs)
                   if s in sources.val_labels}
    _validation_only_synsets(sources.val_path, set(sources.train), val_synsets, problems)
    names = _class_names(set(sources.train) | val_synsets, options)
    boxes = _group_boxes(sources.train_boxes)
    if sources.train and layout == "kaggle":
        items["train"] = _zip_train_chunks(sources, names, boxes, options, problems)
    elif sources.train:
        selection_for = lambda synset: _examples.Selection(
            subset_stems=_subset_of(options, synset), images_per_class=options.images_per_class)
        classes = [_ClassSource(synset, path) for synset, path in sources.train.items()]
        items["train"] = _class_items("train", classes, names, sources.words, boxes, selection_for)
    if sources.val_refs:
        items["validation"] = _validation_chunks(sources.val_path, sources.val_refs, sources.val_labels,
                                                 sources.val_boxes, names, sources.words, options, problems)
    return Plan(layout, names, items, problems, f"validation labels from {sources.label_source}",
                words=sources.words)


def _split_selections(manual_dir, options):
    """{split: synset -> Selection}: from the two split lists, or a held-out fraction."""
    paths = {split: os.path.join(manual_dir, name) for split, name in SPLIT_LISTS.items()}
    found = [split for split, path in paths.items() if os.path.isfile(path)]
    if len(found) == 1:
        missing = paths["validation" if found == ["train"] else "train"]
        raise _sources.ManualDirError(
            f"manual_dir has {paths[found[0]]} but not {missing}; give both split lists, or neither "
            f"(then {options.validation_fraction:.0%} of each class is held out for validation)")
    if found:
        listed = {split: group_stems(_sources.read_stem_list(path, f"{split} list")) for split, path in paths.items()}
        holdout = {split: None for split in paths}
    else:
        listed = {split: None for split in paths}
        holdout = {split: (options.validation_fraction, split == "validation") for split in paths}

    def selection_for(split):
        return lambda synset: _examples.Selection(
            split_stems=None if listed[split] is None else _stems_for(listed[split], synset),
            holdout=holdout[split], subset_stems=_subset_of(options, synset), images_per_class=options.images_per_class)

    return {split: selection_for(split) for split in paths}, ("split lists" if found else "held-out fraction")


def _plan_tree(layout, manual_dir, classes, boxes, options, problems):
    names = _class_names({c.synset for c in classes}, options)
    words = _sources.read_words(manual_dir)
    selections, how = _split_selections(manual_dir, options)
    if how == "held-out fraction" and options.validation_fraction == 0:
        del selections["validation"]  # nothing is held out: no validation split
    items = {split: _class_items(split, classes, names, words, boxes, selection_for)
             for split, selection_for in selections.items()}
    return Plan(layout, names, items, problems, f"splits from {how}", words=words)


def _folder_classes(manual_dir, problems):
    """One _ClassSource per <synset>/ folder; a linked folder is reported, not followed."""
    classes = []
    for entry in sorted(os.scandir(manual_dir), key=lambda e: e.name):
        if not _sources.SYNSET.match(entry.name):
            continue
        if entry.is_symlink():
            problems.append((entry.path, "synset folder is a symbolic link; the extracted layout does not follow "
                                         "links (copy the folder in, or build from the folder it points to)"))
        elif entry.is_dir(follow_symlinks=False):
            classes.append(_ClassSource(entry.name, entry.path))
    if not classes:
        raise _sources.ManualDirError(f"manual_dir {manual_dir} has no <synset>/ folder that is not a link; "
                                      "the extracted layout does not follow links")
    return classes


def _listed_images(plan, options):
    """How many images the file list names among the plan's classes (its ``listed_images``)."""
    if options.subset is None:
        return 0
    names = set(plan.class_names)
    return sum(len(stems) for synset, stems in options.subset.items() if synset in names or synset == "")


def make_plan(manual_dir, options):
    """The Plan for ``manual_dir``; ManualDirError when it cannot be built."""
    plan = _make_plan(manual_dir, options)
    if options.subset is not None:
        listed = {synset or image_stem.split("_")[0]
                  for synset, stems in options.subset.items() for image_stem in stems}
        if not listed & set(plan.class_names):
            raise _sources.ManualDirError(
                f"the file list names no image of the {len(plan.class_names)} classes being built (its synsets: "
                f"{sorted(listed)[:3]}); check that it belongs to this manual_dir")
    if options.images_per_class is None:  # with a cap, fewer images than listed is intended
        plan.listed_images = _listed_images(plan, options)
    return plan


def _make_plan(manual_dir, options):
    manual_dir = os.fspath(manual_dir)
    layout = detect_layout(manual_dir)
    if options.class_set not in CLASS_SETS:
        raise _sources.ManualDirError(f"class_set must be one of {CLASS_SETS}, found {options.class_set!r}")
    if layout == "ilsvrc2012":
        return _plan_ilsvrc(manual_dir, options)
    if layout in ("kaggle", "kaggle-tree"):
        return _plan_kaggle(manual_dir, layout, options)
    problems = []
    if layout == "fall11":
        path = next(os.path.join(manual_dir, n) for n in FALL11_IMAGES if os.path.isfile(os.path.join(manual_dir, n)))
        classes = _tar_classes(path, problems)
        boxes = _sources.read_tar_annotations(os.path.join(manual_dir, _sources.FALL11_ANNOTATIONS), problems)
    else:
        classes = _folder_classes(manual_dir, problems)
        boxes = _sources.read_folder_annotations(os.path.join(manual_dir, "Annotation"), problems)
    return _plan_tree(layout, manual_dir, classes, _group_boxes(boxes), options, problems)

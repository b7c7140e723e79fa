"""The TFDS builder ``imagenet_archive``: ImageNet from its original archives, as they are.

    tfds build --imports=bwtf.data imagenet_archive --manual_dir=M --data_dir=D
    tfds build --imports=bwtf.data imagenet_archive --manual_dir=M --data_dir=D \\
        --config='{"name": "present-100", "class_set": "present", "images_per_class": 100}'
    python -m bwtf.data.build --manual_dir=M --data_dir=D --num_workers=2   # 2 local processes

The layout (ILSVRC2012 tars, fall 2011 ``Images.tar``, the Kaggle zip or its
unzipped tree, or an extracted ``<synset>/*.JPEG`` tree) is detected from manual_dir. Planning reads only
tar headers and side files; the images are then read item by item (a synset
tar, a folder, a chunk of the validation tar), either in this process, in a
local process pool (``local_workers`` above 1, see ``_parallel``), or in
Apache Beam workers when the build is given Beam options. The same plan gives
the same keys, so parallel and sequential builds write the same examples.

Deliberately left out: a test split (ILSVRC2012 has no labels for it) and
downloading (ImageNet needs registration; the archives are already on disk).
"""
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import re
from typing import Optional, Sequence, Union

from etils import epath
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import naming
from tensorflow_datasets.core import shuffle as tfds_shuffle

import bwtf
from bwtf.data.imagenet_archive import _examples
from bwtf.data.imagenet_archive import _parallel
from bwtf.data.imagenet_archive import _plan
from bwtf.data.imagenet_archive import _sources

CLASS_SETS = _plan.CLASS_SETS
REPORT_FILE = "bad_images.json"
ManualDirError = _sources.ManualDirError
WorkerError = _parallel.WorkerError  # a worker process of a local parallel build died
detect_layout = _plan.detect_layout  # "ilsvrc2012", "fall11" or "extracted"; ManualDirError otherwise
_PARTS_DIR = "_bad_image_parts"
SHUFFLE_MEMORY_BYTES = 64 << 20
_REGISTERED_NAMES = ("ilsvrc1000", "present")  # reserved for their class_set with default options


class BuilderConfigError(bwtf.UserError, ValueError):
    """A builder config option has a value the builder cannot use."""


class BadImagesError(bwtf.UserError, RuntimeError):
    """More images were damaged than the config's ``max_bad_image_fraction`` allows."""


@dataclasses.dataclass(eq=False)
class ImagenetArchiveConfig(tfds.core.BuilderConfig):
    """What to build from manual_dir.

    class_set: "present" (labels are the synsets found in manual_dir) or
      "ilsvrc-1000" (labels are the 1000 ILSVRC2012 synsets; others are left out).
    class_list: synsets to keep (a sequence, or the path of a file with one
      synset per line); the labels are then exactly these, sorted.
    images_per_class: keep the first N images (by file name) of each class in
      each split.
    file_list: path of a file of lines '<synset> <image>'; only those images.
    validation_fraction: share of each class held out for validation when a
      fall11 or extracted archive has no split lists.
    max_bad_image_fraction: the build fails when a larger share of images is
      damaged (they are always skipped and listed in bad_images.json).
    """

    class_set: str = "present"
    class_list: Optional[Union[str, Sequence[str]]] = None
    images_per_class: Optional[int] = None
    file_list: Optional[str] = None
    validation_fraction: float = 0.02
    max_bad_image_fraction: float = 0.001

    def __post_init__(self):
        if self.class_set not in CLASS_SETS:
            raise BuilderConfigError(f"class_set must be one of {', '.join(CLASS_SETS)}, found {self.class_set!r}")
        if self.images_per_class is not None and (
                not isinstance(self.images_per_class, int) or self.images_per_class < 1):
            raise BuilderConfigError(f"images_per_class must be a positive integer, found {self.images_per_class!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise BuilderConfigError(f"validation_fraction must be in [0, 1), found {self.validation_fraction!r}")
        if not 0.0 <= self.max_bad_image_fraction <= 1.0:
            raise BuilderConfigError(f"max_bad_image_fraction must be in [0, 1], found {self.max_bad_image_fraction!r}")
        if self.class_list is not None and not isinstance(self.class_list, str):
            self.class_list = tuple(self.class_list)


_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$")


def _digest(text):
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def make_config(*, class_set="present", class_list=None, images_per_class=None, file_list=None,
                validation_fraction=0.02, max_bad_image_fraction=0.001, name=None):
    """An ImagenetArchiveConfig whose name (the output folder) tells the options apart.

    Without other options the names are "present" (the registered default)
    and "ilsvrc1000"; a name given explicitly must not be one of those.
    """
    derived = _derived_name(class_set, class_list, images_per_class, file_list, validation_fraction,
                            max_bad_image_fraction)
    if name in _REGISTERED_NAMES and name != derived:
        raise BuilderConfigError(f"config name {name!r} is reserved for class_set={name} with default options; "
                          "choose another name for these options")
    if name is not None and (not _CONFIG_NAME.match(name) or ".." in name):
        raise BuilderConfigError(f"config name {name!r} must be one folder name of letters, digits, '_', '-', '.' and '+' "
                          "(at most 100, no '..' and no '/'), such as 'present-100'")
    name = name or derived
    return ImagenetArchiveConfig(
        name=name, class_set=class_set, class_list=class_list, images_per_class=images_per_class,
        file_list=file_list, validation_fraction=validation_fraction,
        max_bad_image_fraction=max_bad_image_fraction,
        description=f"class_set={class_set}" + ("" if name in _REGISTERED_NAMES else ", with subset options"))


def config_for_builder(config):
    """What to pass as ``config=`` to Builder: a registered config by name, else the config itself."""
    return config.name if config.name in Builder.builder_configs else config


def _derived_name(class_set, class_list, images_per_class, file_list, validation_fraction,
                  max_bad_image_fraction):
    parts = [class_set.replace("-", "")]
    if class_list is not None:
        listed = class_list if isinstance(class_list, str) else ",".join(sorted(class_list))
        parts.append(f"classes_{_digest(listed)}")
    if images_per_class is not None:
        parts.append(f"per_class_{images_per_class}")
    if file_list is not None:
        parts.append(f"files_{_digest(os.path.abspath(file_list))}")
    if validation_fraction != 0.02:
        parts.append(f"holdout_{validation_fraction:g}")
    if max_bad_image_fraction != 0.001:
        parts.append(f"max_bad_{max_bad_image_fraction:g}")
    return "-".join(parts)


def _read_class_list(class_list):
    if not isinstance(class_list, str):
        return tuple(class_list)
    if not os.path.isfile(class_list):
        raise BuilderConfigError(f"class_list file {class_list} does not exist; expected one synset per line")
    text = _sources.read_text(class_list, "class_list file")
    return tuple(line.split()[0] for line in text.splitlines() if line.strip())


def plan_build(manual_dir, config):
    """The build's plan, made before TFDS creates anything; BuilderConfigError or ManualDirError for bad input.

    Pass it to the builder as ``given_plan`` so the archive is planned once.
    """
    plan = _plan.make_plan(manual_dir, _plan_options(config))
    if not any(plan.items.values()):
        raise ManualDirError(f"manual_dir {manual_dir} has no images of the selected classes")
    return plan


def _plan_options(config):
    """The _plan.PlanOptions for a config (reads the class and file lists it names)."""
    class_list = _read_class_list(config.class_list) if config.class_list is not None else None
    subset = None
    if config.file_list is not None:
        subset = _plan.group_stems(_sources.read_stem_list(config.file_list, "file_list"))
    return _plan.PlanOptions(class_set=config.class_set, class_list=class_list,
                             images_per_class=config.images_per_class, subset=subset,
                             validation_fraction=config.validation_fraction)


class Builder(tfds.core.GeneratorBasedBuilder):
    """ImageNet (ILSVRC2012, fall 2011 or an extracted tree) with bounding boxes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: three layouts, bounding boxes, parallel builds."}
    # One registered config, so that `tfds build imagenet_archive` builds one
    # dataset that suits any archive; every other option set (ilsvrc-1000
    # included) is a custom config named after its options, found on disk by
    # tfds.load like a registered one.
    BUILDER_CONFIGS = [make_config()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    manual_dir holds ImageNet as downloaded, in one of four layouts:
    * ILSVRC2012: ILSVRC2012_img_train.tar and/or ILSVRC2012_img_val.tar; optional
      ILSVRC2012_bbox_train_v2.tar.gz, ILSVRC2012_bbox_val_v3.tgz, ILSVRC2012_devkit_t12.tar.gz,
      LOC_val_solution.csv, LOC_synset_mapping.txt or words.txt.
    * fall 2011: Images.tar or fall11_whole.tar; optional Annotation.tar.gz, words.txt,
      train_list.txt and validation_list.txt (lines '<synset> <image>').
    * Kaggle: imagenet-object-localization-challenge.zip (read in place), or its unzipped
      ILSVRC/Data/CLS-LOC/{train,val}, ILSVRC/Annotations/CLS-LOC/{train,val}, LOC_val_solution.csv,
      LOC_synset_mapping.txt.
    * extracted: <synset>/*.JPEG folders; optional Annotation/<synset>/*.xml, words.txt and the lists.
    Register at https://image-net.org/download-images to get the archives.
    """

    def _info(self):
        config = self.builder_config
        fixed_names = config.class_set == "ilsvrc-1000" and config.class_list is None
        return tfds.core.DatasetInfo(
            builder=self,
            description="ImageNet images with labels, synset words and bounding boxes, read from the "
                        "original archives (ILSVRC2012, fall 2011 or an extracted tree).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=_plan.ilsvrc_synsets() if fixed_names else None),
                "synset": tfds.features.Text(),
                "label_text": tfds.features.Text(),
                "file_name": tfds.features.Text(),
                "bboxes": tfds.features.Sequence(tfds.features.BBoxFeature()),
            }),
            supervised_keys=("image", "label"),
            homepage="https://image-net.org/",
            # Filled by the plan: "synsets" (the label names, in label order)
            # and "words" (each label's words, "" when unknown), so that any
            # program reads them with tfds.builder_from_directory(...).info.metadata.
            metadata=tfds.core.MetadataDict(),
        )

    # Processes for a build without Beam options: above 1, the splits are
    # written by _parallel's local process pool (same shards as with 1).
    # Set by bwtf.data.build; `tfds build` leaves it at 1.
    local_workers = 1
    workers_used = 1  # local_workers capped by the work items and the CPUs, once a build ran

    def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
        # TFDS switches to Beam only when the examples come as a PTransform, and
        # it does not tell _generate_examples whether Beam options were given.
        self._use_beam = download_config.beam_options is not None or download_config.beam_runner is not None
        with _bounded_shuffle_memory():
            try:
                if self.local_workers > 1 and not self._use_beam:
                    self._prepare_in_processes(dl_manager, download_config)
                else:
                    super()._download_and_prepare(dl_manager, download_config)
            except AssertionError as error:
                if "No examples were yielded" not in str(error):
                    raise
                report = self._report({})
                kept = self._write_report(report, failed=True)
                misses = [p["reason"] for p in report["problems"] if p["file"] == self.builder_config.file_list]
                raise BadImagesError(
                    f"a split has no usable image: every image selected for it is damaged or left out "
                    f"({bad_image_count(report)} damaged{'; the file list ' + misses[0] if misses else ''}); "
                    f"nothing was written. The report is in {kept}") from None
        self._finish_report()

    # A plan made by plan_build() before the build (bwtf.data.build sets it);
    # `tfds build` leaves it None and the builder plans itself.
    given_plan = None

    def _make_plan(self, dl_manager):
        self._plan = self.given_plan or _plan.make_plan(dl_manager.manual_dir, _plan_options(self.builder_config))
        self.info.features["label"].names = self._plan.class_names
        self.info.metadata.update(synsets=list(self._plan.class_names),
                                  words=[self._plan.words.get(name, "") for name in self._plan.class_names])
        if not any(self._plan.items.values()):
            raise ManualDirError(f"manual_dir {dl_manager.manual_dir} has no images of the selected classes")
        return {split: items for split, items in self._plan.items.items() if items}

    def _split_generators(self, dl_manager):
        report_dir = os.fspath(epath.Path(self.data_dir) / _PARTS_DIR)
        return {split: self._generate_examples(items, report_dir)
                for split, items in self._make_plan(dl_manager).items()}

    def _prepare_in_processes(self, dl_manager, download_config):
        """What GeneratorBasedBuilder._download_and_prepare does, with the splits written by a process pool."""
        items_of_split = self._make_plan(dl_manager)
        suffix = file_adapters.ADAPTER_FOR_FORMAT[self.info.file_format].FILE_SUFFIX
        templates = {split: naming.ShardedFileTemplate(split=split, dataset_name=self.name, data_dir=self.data_path,
                                                       filetype_suffix=suffix)
                     for split in items_of_split}
        target = _parallel.Target(
            features=self.info.features, templates=templates, file_format=self.info.file_format,
            shard_config=download_config.get_shard_config(),
            report_dir=os.fspath(epath.Path(self.data_dir) / _PARTS_DIR),
            scratch_dir=os.fspath(epath.Path(self.data_path) / "_parallel_runs"))
        tasks = sum(map(len, _parallel.split_items(items_of_split).values()))
        self.workers_used = _parallel.worker_count(self.local_workers, tasks)
        split_infos = _parallel.write_splits(items_of_split, target, self.workers_used)
        self.info.set_splits(tfds.core.SplitDict(split_infos))

    def _generate_examples(self, items, report_dir):
        if getattr(self, "_use_beam", False):
            beam = tfds.core.lazy_imports.apache_beam
            return (beam.Create(items) | beam.Reshuffle()
                    | beam.FlatMap(_examples.examples_of_item, report_dir=report_dir))
        return itertools.chain.from_iterable(_examples.examples_of_item(item, report_dir) for item in items)

    def _report(self, examples):
        """The merged report of this build (the per-item parts are consumed)."""
        report = _merge_parts(epath.Path(self.data_dir) / _PARTS_DIR)
        problems = list(self._plan.problems)
        found = sum(examples.values()) + bad_image_count(report)
        if self._plan.listed_images and found < self._plan.listed_images:
            problems.append((self.builder_config.file_list, f"names {self._plan.listed_images} images of the "
                             f"selected classes; only {found} were found in manual_dir"))
        report["problems"] = [{"file": f, "reason": r} for f, r in sorted(problems)]
        report.update(layout=self._plan.layout, notes=self._plan.label_source, examples=examples,
                      max_bad_image_fraction=self.builder_config.max_bad_image_fraction)
        return report

    def _write_report(self, report, failed):
        """Writes the report into the dataset folder, or next to it (kept after TFDS removes it) on failure."""
        data_dir = epath.Path(self.data_dir)
        path = data_dir.parent / f"{REPORT_FILE[:-5]}-{self.version}.json" if failed else data_dir / REPORT_FILE
        _write_json(path, report)
        return path

    def _finish_report(self):
        """Merges the per-item reports into bad_images.json; fails above the threshold."""
        examples = {name: split.num_examples for name, split in self.info.splits.items()}
        report = self._report(examples)
        bad = bad_image_count(report)
        total = bad + sum(examples.values())
        if total and bad / total > self.builder_config.max_bad_image_fraction:
            kept = self._write_report(report, failed=True)
            damaged = [e["file"] for e in report["bad_images"] if e.get("damaged_archive")]
            raise BadImagesError(
                f"{bad} of {total} images ({bad / total:.2%}) are damaged, above max_bad_image_fraction="
                f"{self.builder_config.max_bad_image_fraction:g}; nothing was written"
                + (f"; damaged archives: {', '.join(damaged[:3])}" + (" and more" if len(damaged) > 3 else "")
                   if damaged else "")
                + f". The list is in {kept}; fix or remove those files, or raise max_bad_image_fraction.")
        self._write_report(report, failed=False)


@contextlib.contextmanager
def _bounded_shuffle_memory():
    """Caps the memory TFDS's sequential shuffler uses before it spills to disk.

    TFDS keeps up to 1 GB of serialized examples in memory before moving them
    to its on-disk buckets. Any ImageNet split is far above that, so the
    spill happens anyway; spilling from the start costs no extra I/O and
    keeps the build's peak memory independent of the dataset, which is what
    a shared HPC node with per-job memory limits needs. Beam builds shuffle
    in Beam and are not affected.
    """
    original = tfds_shuffle.MAX_MEM_BUFFER_SIZE
    tfds_shuffle.MAX_MEM_BUFFER_SIZE = min(original, SHUFFLE_MEMORY_BYTES)
    try:
        yield
    finally:
        tfds_shuffle.MAX_MEM_BUFFER_SIZE = original


# The data_dir may be on any filesystem TFDS supports (gs://...), so files
# there go through epath rather than os and open().
def _write_json(path, value):
    _examples.write_text_atomically(path, json.dumps(value, indent=1, sort_keys=True))


def _merge_parts(parts_dir):
    merged, counts = {"bad_images": [], "skipped_members": [], "reencoded": []}, {}
    if parts_dir.is_dir():
        for part in sorted(parts_dir.glob("*.json")):
            for key, entries in json.loads(part.read_text(encoding="utf-8")).items():
                if key == "counts":
                    for what, number in entries.items():
                        counts[what] = counts.get(what, 0) + number
                else:
                    merged[key].extend(entries)
        parts_dir.rmtree()
    # A damaged tar read by the items of both splits (held-out layouts) is one loss, not two.
    damaged = {}
    for entry in merged["bad_images"]:
        if entry.get("damaged_archive"):
            damaged[entry["file"]] = max(entry, damaged.get(entry["file"], entry), key=lambda e: e["images"])
    merged["bad_images"] = [e for e in merged["bad_images"] if not e.get("damaged_archive")] + list(damaged.values())
    for key in ("skipped_members", "reencoded"):  # both split items of a held-out class report the same member
        merged[key] = list({json.dumps(e, sort_keys=True): e for e in merged[key]}.values())
    for entries in merged.values():
        entries.sort(key=lambda entry: (entry.get("split", ""), entry["file"]))
    merged["counts"] = counts
    return merged


def bad_image_count(report):
    """Images lost to damage: one per bad image, the estimated contents of each damaged archive."""
    return sum(entry.get("images", 1) for entry in report.get("bad_images", []))


def read_report(dataset_dir):
    """The bad-image report of a built dataset version folder, or None if it has none."""
    path = epath.Path(dataset_dir) / REPORT_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))

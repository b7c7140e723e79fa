"""Human-readable label text for each class, for the serving signature.

The dataset's ``label`` feature names the classes (synsets such as
"n01440764"), but the words ("tench, Tinca tinca") are stored per example in
``label_text``, not in the dataset info. So, first match wins:

1. ``--labels_file``: a synset words file as ImageNet ships it
   (``LOC_synset_mapping.txt`` or ``words.txt``: ``<synset> <words>`` per line);
   every class must have a line.
2. The dataset's ``label_text`` feature, read from its smallest split (images
   are not decoded) until every class has been seen.
3. The class names themselves.

Deliberately left out: translations and any other per-class metadata.
"""
import os

from absl import logging

import bwtf


class LabelsFileError(bwtf.UserError, ValueError):
    """The labels file is missing, malformed or lacks some classes."""


def read_labels_file(path, class_names):
    """The words of each class in ``class_names`` from a synset words file."""
    if not os.path.isfile(path):
        raise LabelsFileError(f"--labels_file {path} does not exist; expected a synset words file "
                              "such as LOC_synset_mapping.txt or words.txt")
    words = {}
    with open(path, encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream, start=1):
            parts = line.strip().split(None, 1)
            if not parts:
                continue
            words[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    missing = [name for name in class_names if name not in words]
    if missing:
        raise LabelsFileError(
            f"--labels_file {path} has no line for {len(missing)} of the {len(class_names)} classes "
            f"(e.g. {missing[0]!r}); expected '<synset> <words>' lines covering every class of the "
            "dataset. Use the words file of the same ImageNet release, or omit --labels_file.")
    return tuple(words[name] for name in class_names)


def _scan_label_texts(dataset_config, num_classes):
    """{label: text} from the smallest split's ``label_text`` feature."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(dataset_config.name, data_dir=dataset_config.data_dir)
    if "label_text" not in builder.info.features:
        return {}
    split = min(builder.info.splits.values(), key=lambda info: info.num_examples).name
    decoders = tfds.decode.PartialDecoding({"label": True, "label_text": True})
    texts = {}
    for example in tfds.as_numpy(builder.as_dataset(split=split, decoders=decoders)):
        texts.setdefault(int(example["label"]), example["label_text"].decode("utf-8"))
        if len(texts) == num_classes:
            break
    return texts


def label_texts(dataset_config, class_names, labels_file=None):
    """One text per class, in label order (see the module docstring)."""
    if labels_file:
        return read_labels_file(labels_file, class_names)
    if dataset_config is None or dataset_config.use_synthetic_data:
        return tuple(class_names)
    texts = _scan_label_texts(dataset_config, len(class_names))
    unseen = [name for label, name in enumerate(class_names) if not texts.get(label)]
    if unseen:
        logging.warning(
            "no label text for %d class(es) (e.g. %s) in dataset %s; their synset stands in. "
            "Pass --labels_file=words.txt to name them.", len(unseen), unseen[0], dataset_config.name)
    return tuple(texts.get(label) or name for label, name in enumerate(class_names))

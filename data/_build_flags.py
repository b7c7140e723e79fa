"""The absl flags of `python -m bwtf.data.build` (imported only by its run())."""
from absl import flags

from bwtf.data.imagenet_archive import imagenet_archive_dataset_builder as builder_lib

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder holding the ImageNet archives (any supported layout).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to write the dataset into.")
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 1, "Processes to build with on this node; with --beam_pipeline_options, the DirectRunner's.")
_BEAM_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", None,
    "Beam options 'key=value,...' (e.g. runner=FlinkRunner,...): build through Apache Beam.")
_CLASS_SET = flags.DEFINE_enum("class_set", "present", builder_lib.CLASS_SETS,
                               "Labels: every synset present, or the 1000 ILSVRC2012 synsets.")
_CLASS_LIST = flags.DEFINE_string("class_list", None, "File of synsets (one per line) to keep, e.g. a 100-class subset.")
_IMAGES_PER_CLASS = flags.DEFINE_integer("images_per_class", None, "Keep the first N images of each class and split.")
_FILE_LIST = flags.DEFINE_string("file_list", None, "File of lines '<synset> <image>': only these images.")
_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", 0.02, "Held-out share per class for archives without split lists.")
_MAX_BAD = flags.DEFINE_float("max_bad_image_fraction", 0.001, "Fail when a larger share of images is damaged.")
_CONFIG_NAME = flags.DEFINE_string("config_name", None, "Output config name (default: derived from the options).")

# In the order --help shows them.
HOLDERS = (_MANUAL_DIR, _DATA_DIR, _NUM_WORKERS, _BEAM_OPTIONS, _CLASS_SET, _CLASS_LIST, _IMAGES_PER_CLASS,
           _FILE_LIST, _VALIDATION_FRACTION, _MAX_BAD, _CONFIG_NAME)


def build_arguments():
    """The keyword arguments of build.build_dataset, from the parsed flags."""
    return dict(
        manual_dir=_MANUAL_DIR.value, data_dir=_DATA_DIR.value, num_workers=_NUM_WORKERS.value,
        beam_pipeline_options=_BEAM_OPTIONS.value, class_set=_CLASS_SET.value, class_list=_CLASS_LIST.value,
        images_per_class=_IMAGES_PER_CLASS.value, file_list=_FILE_LIST.value,
        validation_fraction=_VALIDATION_FRACTION.value, max_bad_image_fraction=_MAX_BAD.value,
        name=_CONFIG_NAME.value)

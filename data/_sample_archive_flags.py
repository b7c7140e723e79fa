"""The absl flags of `python -m bwtf.data.sample_archive` (imported only by its run())."""
from absl import flags

from bwtf.data import sample_archive

_OUT = flags.DEFINE_string("out", None, "Directory to create (must not exist or be empty).")
_LAYOUT = flags.DEFINE_enum("layout", "ilsvrc2012", sample_archive.LAYOUTS, "Archive layout to write.")
_SOURCE = flags.DEFINE_string("source", None, "Folder of real <synset>_*.JPEG files to use instead of the digits.")

_IMAGES_PER_CLASS = flags.DEFINE_integer("images_per_class", None, "Keep only the first N digits of each class.")


def arguments():
    """(out, layout, source, images_per_class) from the parsed flags."""
    return _OUT.value, _LAYOUT.value, _SOURCE.value, _IMAGES_PER_CLASS.value

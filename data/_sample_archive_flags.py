"""The absl flags of `python -m bwtf.data.sample_archive`, defined by its run() only.

The layouts are passed in, so this module imports nothing of sample_archive
(which imports it): no import circle.
"""
from absl import flags


def define(layouts):
    """Defines the flags; returns their holders (out, layout, source, images_per_class)."""
    return (
        flags.DEFINE_string("out", None, "Directory to create (must not exist or be empty)."),
        flags.DEFINE_enum("layout", "ilsvrc2012", layouts, "Archive layout to write."),
        flags.DEFINE_string("source", None, "Folder of real <synset>_*.JPEG files to use instead of the digits."),
        flags.DEFINE_integer("images_per_class", None, "Keep only the first N digits of each class."),
    )

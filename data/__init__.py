"""bwtf.data: the TFDS builder ``imagenet_archive`` for local ImageNet archives.

Importing this package registers the builder with TFDS, so that
``tfds.builder("imagenet_archive", data_dir=D)`` and
``tfds build --imports=bwtf.data imagenet_archive`` find it. Loading an already
built dataset does not need bwtf at all: ``tfds.builder_from_directory``.
"""
from bwtf.data.imagenet_archive import imagenet_archive_dataset_builder  # registers "imagenet_archive"

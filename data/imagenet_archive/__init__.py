"""The ``imagenet_archive`` TFDS builder (TFDS folder convention: builder, dummy_data)."""
from bwtf.data.imagenet_archive.imagenet_archive_dataset_builder import Builder
from bwtf.data.imagenet_archive.imagenet_archive_dataset_builder import ImagenetArchiveConfig
from bwtf.data.imagenet_archive.imagenet_archive_dataset_builder import make_config

"""TFDS's own declarative builder test over the dummy_data that bwtf generates itself.

dummy_data/ is a tiny ILSVRC2012-layout digits archive (5 scans per class);
regenerate it with:
    python -m bwtf.data.sample_archive --out=data/imagenet_archive/dummy_data --images_per_class=5
"""
import pathlib

from tensorflow_datasets import testing

from bwtf.data import sample_archive
from bwtf.data.imagenet_archive import imagenet_archive_dataset_builder

_DUMMY_DATA = pathlib.Path(imagenet_archive_dataset_builder.__file__).parent / "dummy_data"


class ImagenetArchiveTest(testing.DatasetBuilderTestCase):
    DATASET_CLASS = imagenet_archive_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["present"]
    EXAMPLE_DIR = str(_DUMMY_DATA)
    SPLITS = {"train": 40, "validation": 10}
    SKIP_CHECKSUMS = True

    def test_session(self, *args, **kwargs):
        return super().test_session(*args, **kwargs)

    # tf.test.TestCase's session helper (which TFDS's checks call) is not a
    # test; without this pytest collects it and reports a meaningless skip.
    test_session.__test__ = False


def test_dummy_data_is_what_sample_archive_writes(tmp_path):
    """dummy_data/ must be regenerated (command above) whenever the sample archive changes."""
    fresh = pathlib.Path(sample_archive.write_sample_archive(tmp_path / "dummy", images_per_class=5))
    assert {p.name: p.read_bytes() for p in fresh.iterdir()} == {p.name: p.read_bytes() for p in _DUMMY_DATA.iterdir()}

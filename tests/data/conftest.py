"""Fixtures for the bwtf.data tests: tiny real-data archives, builds and tar helpers."""
import io
import pathlib
import shutil
import tarfile

import pytest


@pytest.fixture(scope="session")
def tiny_archives(tmp_path_factory):
    """{layout: manual_dir} of digits archives with 5 images per class (40 train, 10 validation)."""
    from bwtf.data import sample_archive

    root = tmp_path_factory.mktemp("tiny_archives")
    return {layout: pathlib.Path(sample_archive.write_sample_archive(root / layout, layout, images_per_class=5))
            for layout in sample_archive.LAYOUTS}


@pytest.fixture
def tiny_copy(tiny_archives, tmp_path):
    """A function layout -> a private, modifiable copy of that tiny archive."""

    def copy(layout="ilsvrc2012"):
        target = tmp_path / f"manual-{layout}"
        shutil.copytree(tiny_archives[layout], target)
        return target

    return copy


def _build(manual_dir, data_dir, **options):
    from bwtf.data import build as build_lib

    options.setdefault("class_set", "present")
    return build_lib.build_dataset(manual_dir, data_dir, **options)


def _examples(summary, split):
    import tensorflow_datasets as tfds

    import bwtf.data  # noqa: F401  (registers the builder)

    dataset = tfds.load(summary.dataset_name, data_dir=summary.data_dir, split=split)
    return {example["file_name"].decode(): example for example in tfds.as_numpy(dataset)}


def _tar_bytes(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _members(tar_data):
    with tarfile.open(fileobj=io.BytesIO(tar_data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]


def _add_to_synset_tar(manual_dir, synset, extra_members):
    path = pathlib.Path(manual_dir) / "ILSVRC2012_img_train.tar"
    outer = []
    for name, data in _members(path.read_bytes()):
        if name == f"{synset}.tar":
            data = _tar_bytes(_members(data) + list(extra_members))
        outer.append((name, data))
    path.write_bytes(_tar_bytes(outer))


class Tools:
    """Helpers for this folder's tests (a conftest cannot be imported by name).

    build(manual_dir, data_dir, **options) -> BuildSummary (class_set "present" by default)
    examples(summary, split) -> {file_name: numpy example}
    tar_bytes([(name, bytes) or TarInfo]) -> bytes of an uncompressed tar
    members(tar_bytes) -> [(name, bytes)] of its regular files
    add_to_synset_tar(manual_dir, synset, [(name, bytes) or TarInfo]) rewrites ILSVRC2012_img_train.tar
    """

    build = staticmethod(_build)
    examples = staticmethod(_examples)
    tar_bytes = staticmethod(_tar_bytes)
    members = staticmethod(_members)
    add_to_synset_tar = staticmethod(_add_to_synset_tar)


@pytest.fixture(scope="session")
def tools():
    return Tools

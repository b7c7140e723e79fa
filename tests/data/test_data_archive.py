"""bwtf.data.archive: nested tars are read in place, safely, without loading a synset tar."""
import gzip
import io
import os
import tarfile
import tracemalloc

import pytest

from bwtf.data import archive


def _info(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


_HOSTILE = [
    _info("evil_symlink.JPEG", tarfile.SYMTYPE, "/etc/passwd"),
    _info("evil_hardlink.JPEG", tarfile.LNKTYPE, "good_1.JPEG"),
    _info("evil_device", tarfile.CHRTYPE),
    _info("evil_fifo", tarfile.FIFOTYPE),
    ("../escape.JPEG", b"x" * 10),
    ("/absolute.JPEG", b"x" * 10),
]


def test_nested_member_is_listed_and_read_by_offset(tools, tmp_path):
    inner = tools.tar_bytes([("good_1.JPEG", b"one"), ("dir/good_2.JPEG", b"two" * 1000)])
    path = tmp_path / "outer.tar"
    path.write_bytes(tools.tar_bytes([("readme.txt", b"hi"), ("n01440764.tar", inner)]))
    with archive.TarRegion(path) as outer:
        refs = {ref.name: ref for ref in outer.members()}
    synset_tar = refs["n01440764.tar"]
    with archive.TarRegion(path, synset_tar.offset, synset_tar.size) as region:
        assert [(r.name, region.read(r)) for r in region.members()] == [
            ("good_1.JPEG", b"one"), ("dir/good_2.JPEG", b"two" * 1000)]


def test_links_devices_and_escaping_names_are_skipped_and_reported(tools, tmp_path, monkeypatch):
    path = tmp_path / "hostile.tar"
    path.write_bytes(tools.tar_bytes([("good_1.JPEG", b"ok")] + _HOSTILE))
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    with archive.TarRegion(path) as region:
        names = [ref.name for ref in region.members()]
    assert names == ["good_1.JPEG"]
    assert len(region.unsafe) == len(_HOSTILE)
    assert {u.name for u in region.unsafe} >= {"evil_symlink.JPEG", "../escape.JPEG", "/absolute.JPEG"}
    assert sorted(os.listdir(tmp_path)) == before  # nothing was extracted anywhere
    assert not (tmp_path.parent / "escape.JPEG").exists()


def test_nested_gzip_streams_are_read_and_hostile_members_reported(tools, tmp_path):
    def gz(data):
        return gzip.compress(data, mtime=0)

    inner = gz(tools.tar_bytes([("Annotation/n01440764/a.xml", b"<a/>")] + _HOSTILE[:1]))
    path = tmp_path / "Annotation.tar.gz"
    path.write_bytes(gz(tools.tar_bytes([("n01440764.tar.gz", inner), ("flat.xml", b"<b/>")] + _HOSTILE[4:])))
    unsafe = []
    found = list(archive.iter_nested_streams(path, unsafe))
    assert found == [("n01440764.tar.gz", "Annotation/n01440764/a.xml", b"<a/>"), ("flat.xml", None, b"<b/>")]
    assert sorted(u.name for u in unsafe) == ["../escape.JPEG", "/absolute.JPEG", "n01440764.tar.gz/evil_symlink.JPEG"]


def test_a_truncated_outer_tar_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.tar"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(tarfile.ReadError, match="not a readable tar"):
        with archive.TarRegion(path) as region:
            region.members()


@pytest.mark.timeout(120)
def test_reading_a_synset_tar_does_not_hold_it_in_memory(tools, tmp_path):
    """Peak Python memory stays near one image while streaming a 48 MB synset tar."""
    image = os.urandom(1 << 20)
    inner = tools.tar_bytes([(f"n01440764_{i}.JPEG", image) for i in range(48)])
    path = tmp_path / "train.tar"
    path.write_bytes(tools.tar_bytes([("n01440764.tar", inner)]))
    del inner, image
    tracemalloc.start()
    try:
        with archive.TarRegion(path) as outer:
            (ref,) = outer.members()
        total = 0
        with archive.TarRegion(path, ref.offset, ref.size) as region:
            for member in region.members():
                total += len(region.read(member))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 48 << 20
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while reading a 48 MiB synset tar"

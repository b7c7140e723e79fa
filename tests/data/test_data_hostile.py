"""imagenet_archive against hostile and broken input: nothing read or written outside its place,
memory bounded, no silent loss, one clear line (issue 15)."""
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import zlib

import pytest

from bwtf.data import archive
from bwtf.data import images
from bwtf.data.imagenet_archive import imagenet_archive_dataset_builder as builder_lib

SYNSET = "n00000004"
_BUILD = [sys.executable, "-m", "bwtf.data.build"]


def _a_jpeg(tools, manual_dir):
    (_, synset_tar), *_ = tools.members((manual_dir / "ILSVRC2012_img_train.tar").read_bytes())
    return tools.members(synset_tar)[0][1]


def _rewrite_outer(tools, path, change):
    """Rewrites an outer tar, passing each (name, bytes) member through ``change`` (None drops it)."""
    members = [changed for changed in (change(name, data) for name, data in tools.members(path.read_bytes()))
               if changed is not None]
    path.write_bytes(tools.tar_bytes(members))


def test_config_name_cannot_leave_data_dir(tiny_archives, tools, tmp_path):
    for name in ("../../escaped", str(tmp_path / "absolute"), "a/b", "..", ""):
        with pytest.raises(builder_lib.BuilderConfigError):
            tools.build(tiny_archives["ilsvrc2012"], tmp_path / "tfds", name=name or "/")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_extracted_layout_skips_and_reports_links(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy("extracted")
    outside = tmp_path / "outside"
    outside.mkdir()
    good = next((manual_dir / SYNSET).iterdir())
    (outside / f"{SYNSET}_outside.JPEG").write_bytes(good.read_bytes())
    (manual_dir / SYNSET / f"{SYNSET}_outside.JPEG").symlink_to(outside / f"{SYNSET}_outside.JPEG")
    (manual_dir / SYNSET / f"{SYNSET}_passwd.JPEG").symlink_to("/etc/passwd")
    linked_class = outside / "n09999999"
    linked_class.mkdir()
    (linked_class / "n09999999_1.JPEG").write_bytes(good.read_bytes())
    (manual_dir / "n09999999").symlink_to(linked_class)
    (manual_dir / "Annotation" / SYNSET / f"{SYNSET}_passwd.xml").symlink_to("/etc/passwd")
    os.mkfifo(manual_dir / SYNSET / f"{SYNSET}_fifo.JPEG")

    summary = tools.build(manual_dir, tmp_path / "tfds", validation_fraction=0.2)

    assert summary.examples == {"train": 40, "validation": 10}
    report_text = (pathlib.Path(summary.dataset_dir) / builder_lib.REPORT_FILE).read_text()
    assert "root:" not in report_text  # not one byte of /etc/passwd was read
    report = json.loads(report_text)
    skipped = {os.path.basename(e["file"]): e["reason"] for e in report["skipped_members"]}
    assert {f"{SYNSET}_outside.JPEG", f"{SYNSET}_passwd.JPEG", f"{SYNSET}_fifo.JPEG"} <= set(skipped)
    problems = {os.path.basename(p["file"]): p["reason"] for p in report["problems"]}
    assert "symbolic link" in problems["n09999999"] and "symbolic link" in problems[f"{SYNSET}_passwd.xml"]
    train = tools.examples(summary, "train")
    assert "n09999999_1.JPEG" not in train and f"{SYNSET}_outside.JPEG" not in train


_MEASURE = textwrap.dedent("""
    import resource, sys
    from bwtf.data.imagenet_archive import _sources
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    problems = []
    {call}
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) // 1024, len(problems))
    for problem in problems:
        print(*problem)
""")


def _peak_growth_mib(call, timeout=300):
    """Runs ``call`` (a line of Python using _sources and ``problems``) in a fresh process.

    Returns (growth of its peak RSS in MiB over its imports, printed problem lines).
    """
    done = subprocess.run([sys.executable, "-c", _MEASURE.format(call=call)], capture_output=True, text=True,
                          timeout=timeout, check=True)
    first, *problems = done.stdout.splitlines()
    return int(first.split()[0]), problems


def _gzip_bomb(path, members):
    """A .tar.gz of (name, size) members of zeros, written without holding them in memory."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = bytes(16 << 20)
    with open(path, "wb") as out:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            out.write(compressor.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
            for start in range(0, size, len(chunk)):
                out.write(compressor.compress(chunk[: min(len(chunk), size - start)]))
            out.write(compressor.compress(bytes(-size % tarfile.BLOCKSIZE)))
        out.write(compressor.compress(bytes(2 * tarfile.BLOCKSIZE)))
        out.write(compressor.flush())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_gzip_bomb_box_archive_is_read_in_bounded_memory(tmp_path):
    bomb = tmp_path / "ILSVRC2012_bbox_train_v2.tar.gz"
    # 1.5 GiB that nobody wants, then a 40 MiB "XML" (above the 32 MiB cap), then a real one.
    _gzip_bomb(bomb, [("n00000001/huge.JPEG", 3 << 29), ("n00000001/n00000001_1.xml", 40 << 20)])
    assert bomb.stat().st_size < 16 << 20
    growth, problems = _peak_growth_mib(f"_sources.read_tar_annotations({str(bomb)!r}, problems)")
    assert growth < 64, f"reading a 1.5 GiB gzip bomb grew the peak RSS by {growth} MiB"
    assert any("n00000001_1.xml" in p and "above the limit" in p for p in problems)


@pytest.mark.timeout(120)
def test_dev_zero_links_and_fifos_are_refused_without_reading_or_blocking(tiny_copy, tmp_path):
    manual_dir = tiny_copy("extracted")
    notes = manual_dir / "Annotation" / SYNSET
    (notes / f"{SYNSET}_zero.xml").symlink_to("/dev/zero")
    os.mkfifo(notes / f"{SYNSET}_fifo.xml")
    (notes / f"{SYNSET}_folder.xml").mkdir()
    growth, problems = _peak_growth_mib(
        f"_sources.read_folder_annotations({str(manual_dir / 'Annotation')!r}, problems)", timeout=100)
    assert growth < 64
    reasons = {pathlib.Path(p.split()[0]).name: p for p in problems}
    assert "symbolic link" in reasons[f"{SYNSET}_zero.xml"]
    assert "not a regular file" in reasons[f"{SYNSET}_fifo.xml"]
    assert "folder" in reasons[f"{SYNSET}_folder.xml"]
    for name, target in (("words.txt", "/dev/zero"), ("train_list.txt", None)):
        (manual_dir / name).unlink()
        (manual_dir / name).symlink_to(target) if target else os.mkfifo(manual_dir / name)
    done = subprocess.run(_BUILD + [f"--manual_dir={manual_dir}", f"--data_dir={tmp_path / 'tfds'}"],
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 2 and "not a regular file" in done.stderr


def _cut_synset_tar(tools, manual_dir, synset, keep):
    """Cuts synset's tar inside ILSVRC2012_img_train.tar: ``keep(data)`` gives the bytes kept."""
    _rewrite_outer(tools, manual_dir / "ILSVRC2012_img_train.tar",
                   lambda name, data: (name, keep(data) if name == f"{synset}.tar" else data))


def _member_offsets(tar_data):
    with tarfile.open(fileobj=io.BytesIO(tar_data)) as tar:
        return [(m.offset, m.offset_data, m.size) for m in tar.getmembers()]


@pytest.mark.parametrize("where", ["mid-data", "member-boundary", "broken-header"])
def test_a_damaged_synset_tar_counts_its_lost_images_and_is_named(where, tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()

    def damage(data):
        (_, _, _), (second, second_data, second_size), *_ = _member_offsets(data)
        if where == "mid-data":
            return data[: second_data + second_size // 2]
        if where == "member-boundary":
            return data[:second]
        return data[:second] + b"\x7f" * 512 + data[second + 512 :]

    _cut_synset_tar(tools, manual_dir, SYNSET, damage)
    with pytest.raises(builder_lib.BadImagesError, match=f"damaged archives: .*{SYNSET}"):
        tools.build(manual_dir, tmp_path / "strict")
    summary = tools.build(manual_dir, tmp_path / "tfds", max_bad_image_fraction=0.2)
    assert summary.examples["train"] == 37  # the first image of the 4 survives
    assert summary.bad_images == 3  # 1 cut or unreadable + 2 estimated from the other synset tars
    (entry,) = builder_lib.read_report(summary.dataset_dir)["bad_images"]
    assert entry["file"].endswith(f"ILSVRC2012_img_train.tar:{SYNSET}") and entry["images"] == 3


def test_an_outer_tar_cut_at_a_member_boundary_is_refused(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    path = manual_dir / "ILSVRC2012_img_train.tar"
    data = path.read_bytes()
    (_, _, _), (second, _, _), *_ = _member_offsets(data)
    path.write_bytes(data[:second])
    with pytest.raises(builder_lib.ManualDirError, match="cut at a member boundary"):
        tools.build(manual_dir, tmp_path / "tfds")
    assert not (tmp_path / "tfds").exists()


def test_a_duplicate_member_name_is_reported_and_counted(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy()
    jpeg = _a_jpeg(tools, manual_dir)
    tools.add_to_synset_tar(manual_dir, SYNSET, [(f"{SYNSET}_dup.JPEG", jpeg), (f"other/{SYNSET}_dup.JPEG", jpeg)])
    summary = tools.build(manual_dir, tmp_path / "tfds")
    assert summary.examples["train"] == 41 and summary.skipped_members == 1
    (entry,) = builder_lib.read_report(summary.dataset_dir)["skipped_members"]
    assert entry["file"].endswith(f"other/{SYNSET}_dup.JPEG") and "same file name" in entry["reason"]


def _bomb_jpeg(width, height):
    frame = b"\xff\xc0\x00\x11\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + b"\x03" + b"\x01\x11\x00" * 3
    scan = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + frame + scan + b"\x00" * 600 + b"\xff\xd9"


def test_a_decompression_bomb_header_is_skipped_and_reported_at_build_time(tiny_copy, tools, tmp_path):
    bomb = _bomb_jpeg(50000, 50000)
    assert len(bomb) < 700
    with pytest.raises(images.BadImageError, match="50000x50000 pixels"):
        images.inspect(bomb)
    manual_dir = tiny_copy()
    tools.add_to_synset_tar(manual_dir, SYNSET, [(f"{SYNSET}_bomb.JPEG", bomb)])
    summary = tools.build(manual_dir, tmp_path / "tfds", max_bad_image_fraction=0.1)
    assert summary.bad_images == 1 and summary.examples["train"] == 40
    (entry,) = builder_lib.read_report(summary.dataset_dir)["bad_images"]
    assert "decompression bomb" in entry["reason"]


def test_trailing_bytes_after_the_end_of_a_jpeg_are_accepted(tiny_copy, tools):
    jpeg = _a_jpeg(tools, tiny_copy())
    assert images.to_storable_jpeg(jpeg + b"\x00" * 10000).width > 0


def test_a_file_list_naming_missing_images_is_reported(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy("fall11")
    for name in ("train_list.txt", "validation_list.txt"):
        (manual_dir / name).unlink()
    listed = tmp_path / "subset.txt"
    listed.write_text(f"{SYNSET} {SYNSET}_4\n{SYNSET} {SYNSET}_14\n{SYNSET} {SYNSET}_404\n{SYNSET} {SYNSET}_405\n")
    summary = tools.build(manual_dir, tmp_path / "tfds", file_list=str(listed), validation_fraction=0.0)
    assert summary.examples == {"train": 2}
    (problem,) = builder_lib.read_report(summary.dataset_dir)["problems"]
    assert "names 4 images" in problem["reason"] and "only 2 were found" in problem["reason"]


def _slow_images(count):
    """PNGs named .JPEG: each one is decoded and re-encoded, so a build of them takes a while."""
    import numpy as np
    import tensorflow as tf

    png = tf.io.encode_png(np.random.RandomState(0).randint(0, 255, (300, 300, 3), np.uint8)).numpy()
    return [(f"{SYNSET}_{9000 + i}.JPEG", png) for i in range(count)]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_parallel_build_leaves_no_worker_and_no_partial_files(how, tiny_copy, tools, tmp_path):
    psutil = pytest.importorskip("psutil")
    manual_dir = tiny_copy()
    # Enough images that the workers are still busy when the build is killed.
    tools.add_to_synset_tar(manual_dir, SYNSET, _slow_images(3000))
    data_dir = tmp_path / "tfds"
    build = subprocess.Popen(_BUILD + [f"--manual_dir={manual_dir}", f"--data_dir={data_dir}", "--num_workers=2",
                                       "--max_bad_image_fraction=1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(build.pid)
    deadline = time.monotonic() + 300
    while len(parent.children()) < 2 and time.monotonic() < deadline and build.poll() is None:
        time.sleep(0.2)
    workers = parent.children(recursive=True)
    assert len(workers) == 2, "the build should have started two workers"
    time.sleep(2)
    build.send_signal(how)
    build.wait(timeout=120)
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"workers outlived the build: {alive}"
    leftovers = [p for p in data_dir.rglob("*") if p.is_file()]
    if how == signal.SIGTERM:
        assert build.returncode == 130 and "nothing was written" in build.stderr.read()
        assert leftovers == []
    else:  # nothing can clean up after SIGKILL; the run files stay inside TFDS's incomplete folder
        assert all(".incomplete" in str(p) or p.parent.name == ".config" for p in leftovers), leftovers


def test_workers_are_capped_by_work_and_cpus(tiny_archives, tools, tmp_path):
    from bwtf.data.imagenet_archive import _parallel

    assert _parallel.worker_count(10000, 4) <= min(4, len(os.sched_getaffinity(0)))
    summary = tools.build(tiny_archives["ilsvrc2012"], tmp_path / "tfds", num_workers=10000)
    assert 1 <= summary.num_workers <= len(os.sched_getaffinity(0))
    assert summary.examples == {"train": 40, "validation": 10}


def _bad_input_cases(tools, jpeg):
    """(id, change(manual_dir, tmp_path) -> extra flags, expected text) for the CLI table."""

    def write(name, data):
        return lambda m, t: (m / name).write_bytes(data) and []

    def listing(flag, data):
        def change(m, t):
            (t / "list.txt").write_bytes(data)
            return [f"--{flag}={t / 'list.txt'}"]
        return change

    def outer(change_members):
        return lambda m, t: _rewrite_outer(tools, m / "ILSVRC2012_img_train.tar", change_members) or []

    def empty_version_with_file(m, t):
        (t / "tfds" / "imagenet_archive" / "present" / "1.0.0").mkdir(parents=True)
        (t / "tfds" / "imagenet_archive" / "present" / "1.0.0" / "junk").write_text("x")
        return []

    bad_utf8 = b"n00000001 caf\xe9\n"
    return [
        ("csv-not-utf8", write("LOC_val_solution.csv", b"ImageId,PredictionString\nILSVRC2012_val_1,\xff\n"),
         "not UTF-8"),
        ("words-not-utf8", lambda m, t: (m / "LOC_synset_mapping.txt").unlink() or write("words.txt", bad_utf8)(m, t),
         "not UTF-8"),
        ("mapping-not-utf8", write("LOC_synset_mapping.txt", bad_utf8), "not UTF-8"),
        ("class-list-not-utf8", listing("class_list", bad_utf8), "not UTF-8"),
        ("file-list-not-utf8", listing("file_list", b"n00000001 n00000001_\xe9\n"), "not UTF-8"),
        ("class-list-empty", listing("class_list", b"\n"), "class_list is empty"),
        ("class-list-unknown", listing("class_list", b"n00000001\nn09999999\n"), "no images of"),
        ("file-list-matches-nothing", listing("file_list", b"n09999999 n09999999_1\n"), "names no image"),
        ("duplicate-outer-synset-tar", outer(lambda n, d: (n, d) if n != "n00000002.tar" else ("n00000001.tar", d)),
         "two tars of synset"),
        ("box-archive-not-gzip", write("ILSVRC2012_bbox_train_v2.tar.gz", b"this is not gzip" * 100),
         "box archive"),
        ("box-archive-truncated", lambda m, t: (m / "ILSVRC2012_bbox_train_v2.tar.gz").write_bytes(
            (m / "ILSVRC2012_bbox_train_v2.tar.gz").read_bytes()[:200]) and [], "box archive"),
        ("config-name-escapes", lambda m, t: ["--config_name=../../escaped"], "config name"),
        ("version-folder-without-info", empty_version_with_file, "no dataset_info.json"),
        ("num-workers-zero", lambda m, t: ["--num_workers=0"], "num_workers"),
        ("manual-dir-missing", lambda m, t: [f"--manual_dir={t / 'nowhere'}"], "is not a directory"),
        ("manual-dir-unreadable", lambda m, t: m.chmod(0) or [], "cannot be listed: Permission denied"),
        ("data-dir-read-only", lambda m, t: (t / "ro").mkdir(mode=0o555) or [f"--data_dir={t / 'ro' / 'x'}"],
         "Permission denied"),
    ]


def _without_permission_bypass():
    """A command prefix under which even root obeys file permissions (root ignores them otherwise)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_bad_input_gets_exit_2_and_one_line(tiny_archives, tools, tmp_path, subtests):
    jpeg = _a_jpeg(tools, tiny_archives["ilsvrc2012"])
    for case_id, change, expected in _bad_input_cases(tools, jpeg):
        with subtests.test(case_id):
            case_dir = tmp_path / case_id
            manual_dir = case_dir / "manual"
            shutil.copytree(tiny_archives["ilsvrc2012"], manual_dir)
            flags = [f"--manual_dir={manual_dir}", f"--data_dir={case_dir / 'tfds'}"] + (change(manual_dir, case_dir)
                                                                                       or [])
            done = subprocess.run(_without_permission_bypass() + _BUILD + flags, capture_output=True, text=True,
                                  timeout=300)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2, done.stderr[-2000:]
            assert len(lines) == 1 and lines[0].startswith("bwtf-build-data: error: ") and expected in lines[0], lines
            written = [p for p in (case_dir / "tfds").rglob("*") if p.is_file() and p.name != "junk"] \
                if (case_dir / "tfds").exists() else []
            assert written == []
            manual_dir.chmod(0o755)


def test_a_member_name_that_is_not_utf8_is_skipped_and_reported(tools, tmp_path):
    info = tarfile.TarInfo(f"{SYNSET}_caf\udce9.JPEG")
    info.size = 3
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        tar.addfile(info, io.BytesIO(b"abc"))
    (tmp_path / "t.tar").write_bytes(buffer.getvalue())
    with archive.TarRegion(tmp_path / "t.tar") as region:
        assert region.members() == []
    assert [u.reason for u in region.unsafe] == ["name is not UTF-8; ignored"]


def test_a_truncated_inner_box_archive_is_reported_and_the_rest_kept(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy("fall11")
    path = manual_dir / "Annotation.tar.gz"
    import gzip

    members = tools.members(gzip.decompress(path.read_bytes()))
    members = [(name, data[: len(data) // 2] if name == f"{SYNSET}.tar.gz" else data) for name, data in members]
    path.write_bytes(gzip.compress(tools.tar_bytes(members)))
    summary = tools.build(manual_dir, tmp_path / "tfds")
    problems = builder_lib.read_report(summary.dataset_dir)["problems"]
    assert any(p["file"].endswith(f"{SYNSET}.tar.gz") and "damaged archive" in p["reason"] for p in problems)
    train = tools.examples(summary, "train")
    assert all(e["bboxes"].shape[0] == 1 for name, e in train.items() if not name.startswith(SYNSET))


def test_reversed_box_corners_are_swapped_and_counted(tiny_copy, tools, tmp_path):
    manual_dir = tiny_copy("extracted")
    xml = next((manual_dir / "Annotation" / SYNSET).iterdir())
    text = xml.read_text()
    start, end = text.index("<xmin>"), text.index("</xmax>")
    xmin = text[start + 6 : text.index("</xmin>")]
    xmax = text[text.index("<xmax>") + 6 : end]
    xml.write_text(text.replace(f"<xmin>{xmin}</xmin>", f"<xmin>{xmax}</xmin>")
                   .replace(f"<xmax>{xmax}</xmax>", f"<xmax>{xmin}</xmax>"))
    summary = tools.build(manual_dir, tmp_path / "tfds")
    assert summary.corrections == {"boxes_with_reversed_corners_swapped": 1}


def test_the_build_reports_never_write_through_a_planted_link(tmp_path):
    from etils import epath

    from bwtf.data.imagenet_archive import _examples
    victim = tmp_path / "victim.json"
    victim.write_text("keep me")
    data_dir = tmp_path / "data_dir"
    data_dir.mkdir()
    (data_dir / builder_lib.REPORT_FILE).symlink_to(victim)
    builder_lib._write_json(epath.Path(data_dir) / builder_lib.REPORT_FILE, {"bad_images": []})
    assert victim.read_text() == "keep me"
    assert json.loads((data_dir / builder_lib.REPORT_FILE).read_text()) == {"bad_images": []}
    assert sorted(p.name for p in data_dir.iterdir()) == [builder_lib.REPORT_FILE]
    # The per-item reports a (Beam) worker writes go through the same writer.
    (data_dir / "reports").mkdir()
    (data_dir / "reports" / "train-000003.json").symlink_to(victim)
    _examples.write_text_atomically(epath.Path(data_dir) / "reports" / "train-000003.json", "{}")
    assert victim.read_text() == "keep me" and not (data_dir / "reports" / "train-000003.json").is_symlink()

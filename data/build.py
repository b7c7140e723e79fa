"""Builds the TFDS dataset `imagenet_archive` from the ImageNet archives in manual_dir.

    bwtf-build-data --manual_dir=/lustre/imagenet --data_dir=/lustre/tfds \\
        [--num_workers=8] [--class_set=present] [--images_per_class=100] [--flagfile=build.flags]

With --num_workers above 1 on one node, that many local processes (at most
one per work item and per CPU this process may use) read, encode and write the shards (the builder's ``_parallel`` engine); the files
are identical to a sequential build's. With --beam_pipeline_options
(e.g. "runner=FlinkRunner,..." for several nodes, or "runner=DirectRunner,
direct_num_workers=4,direct_running_mode=multi_processing") the build runs
through Apache Beam, TFDS's engine for large builds. Beam is not the default
on one node because its local runners pass every example through one
controller process and run far slower than even a sequential build. The
program ends with a one-screen summary: counts, bad images, throughput and the
output path. The same build is available to Python code as
``build_dataset(manual_dir, data_dir, num_workers=..., **config_options)``.

Exit codes:
  0   done (the summary is printed)
  2   bad flags or archives, or more damaged images than --max_bad_image_fraction (one line)

Deliberately left out: choosing shard sizes or file formats (TFDS decides).
"""
import contextlib
import dataclasses
import functools
import io
import os
import signal
import sys
import time

from absl import flags
from absl import logging as absl_logging
import tensorflow_datasets as tfds

import bwtf
from bwtf import program
from bwtf.data.imagenet_archive import imagenet_archive_dataset_builder as builder_lib

DATASET = "imagenet_archive"


@dataclasses.dataclass(frozen=True)
class BuildSummary:
    """What a build produced; ``dataset_dir`` is the version folder TFDS wrote."""

    dataset_name: str  # what to pass to tfds.load, e.g. "imagenet_archive/present"
    data_dir: str
    dataset_dir: str
    examples: dict
    bad_images: int
    reencoded: int
    skipped_members: int
    problems: int
    layout: str
    notes: str
    seconds: float
    num_workers: int
    reused: bool
    corrections: dict = dataclasses.field(default_factory=dict)  # box corrections counted by the build

    @property
    def images_per_second(self):
        return sum(self.examples.values()) / self.seconds if self.seconds > 0 else 0.0

    def text(self):
        """The one-screen summary the CLI prints."""
        counts = ", ".join(f"{split} {count}" for split, count in sorted(self.examples.items()))
        lines = [
            f"{self.dataset_name} {'already built, reused' if self.reused else 'written'}: {self.dataset_dir}",
            f"layout: {self.layout}" + (f"; {self.notes}" if self.notes else ""),
            f"examples: {counts} (total {sum(self.examples.values())})",
            f"bad images skipped: {self.bad_images}; re-encoded: {self.reencoded}; "
            f"members skipped (links, duplicates, unsafe): {self.skipped_members}; other problems: {self.problems}",
            *([f"boxes corrected: " + ", ".join(f"{what.replace('_', ' ')}: {n}"
                                                for what, n in sorted(self.corrections.items()))]
              if self.corrections else []),
            f"report: {os.path.join(self.dataset_dir, builder_lib.REPORT_FILE)}",
            (f"time: {self.seconds:.1f} s, nothing to build" if self.reused else
             f"time: {self.seconds:.1f} s, {self.images_per_second:.1f} images/s, {self.num_workers} worker(s)"),
            f"train with: --dataset={self.dataset_name} --data_dir={self.data_dir}",
        ]
        return "\n".join(lines)


def built_configs(data_dir, dataset=DATASET):
    """The '<dataset>/<config>' values of every built config in data_dir (what --dataset= takes), sorted."""
    from etils import epath

    root = epath.Path(data_dir) / dataset
    try:
        return sorted(f"{dataset}/{config.name}" for config in root.iterdir()
                      if config.is_dir() and any(config.glob("*/dataset_info.json")))
    except (OSError, ValueError):
        return []


def configs_hint(data_dir, name):
    """" Built here: --dataset=a, --dataset=b." for an error about a dataset ``name`` not found, or ""."""
    found = built_configs(data_dir, name.split("/")[0].split(":")[0]) if data_dir else []
    return f" Built here: {', '.join(f'--dataset={config}' for config in found)}." if found else ""


def beam_options(num_workers, pipeline_options=None):
    """PipelineOptions for a Beam build, or None for a build without Beam (sequential or local processes).

    ``pipeline_options`` is "key=value,key=value" as for `tfds build`; without
    a runner in it, the DirectRunner with num_workers processes is used.
    """
    if num_workers < 1:
        raise builder_lib.BuilderConfigError(f"num_workers must be at least 1, found {num_workers}")
    if not pipeline_options:
        return None
    try:
        from apache_beam.options import pipeline_options as beam_pipeline_options
    except ImportError:
        raise builder_lib.BuilderConfigError(
            "--beam_pipeline_options builds with Apache Beam, which is not installed; "
            "pip install 'bwtf[beam]' (apache-beam==2.60.0), or leave the option out to build on this node") from None
    args = [f"--{option.strip()}" for option in pipeline_options.split(",") if option.strip()]
    if not any(a.startswith("--runner=") for a in args):
        args += ["--runner=DirectRunner", f"--direct_num_workers={num_workers}",
                 "--direct_running_mode=multi_processing"]
    options = beam_pipeline_options.PipelineOptions(flags=args)
    runner = options.view_as(beam_pipeline_options.StandardOptions).runner
    try:
        from apache_beam.runners import runner as beam_runner

        beam_runner.create_runner(runner)  # Fails now, not after the archive has been planned.
    except ValueError as error:
        raise builder_lib.BuilderConfigError(f"--beam_pipeline_options: {error}") from None
    return options


def _created_by_tfds(data_dir, dataset_dir):
    """What TFDS may create for a build: its folders up to the version folder, downloads/, .config/."""
    folders = []
    path = os.path.dirname(dataset_dir)
    while path.startswith(data_dir + os.sep):
        folders.append(path)
        path = os.path.dirname(path)
    downloads = os.path.join(data_dir, "downloads")
    return folders, [os.path.join(downloads, "extracted"), downloads], [
        os.path.join(data_dir, DATASET, ".config", "metadata.json"), os.path.join(data_dir, DATASET, ".config")]


@contextlib.contextmanager
def _removing_what_a_failed_build_created(data_dir, dataset_dir):
    """On failure, removes what TFDS created before it failed: empty folders and its .config metadata.

    TFDS creates <data_dir>/imagenet_archive/<config>/, downloads/ and
    .config/ before it starts; a build that fails must not leave those behind
    as if something was built. Only what did not exist before is removed, and
    folders only when empty, so another build's files are never touched.
    """
    config_folders, download_folders, metadata = _created_by_tfds(data_dir, dataset_dir)
    existing = {path for path in config_folders + download_folders + metadata if os.path.lexists(path)}
    try:
        yield
    except BaseException:
        for path in [*config_folders, *download_folders, *metadata, os.path.join(data_dir, DATASET)]:
            if path in existing or not os.path.lexists(path):
                continue
            with contextlib.suppress(OSError):
                os.rmdir(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
        raise


def _check_writable(data_dir):
    """Creates data_dir if needed and proves a file can be written there, before TFDS starts."""
    os.makedirs(data_dir, exist_ok=True)
    probe = os.path.join(data_dir, f".bwtf-write-probe-{os.getpid()}")
    with open(probe, "xb"):
        pass
    os.unlink(probe)


def _check_version_folder(dataset_dir):
    """An empty version folder (a build killed early) is removed; one with files but no dataset_info.json is refused."""
    if not os.path.lexists(dataset_dir) or os.path.exists(os.path.join(dataset_dir, "dataset_info.json")):
        return
    if os.path.isdir(dataset_dir) and not os.path.islink(dataset_dir) and not os.listdir(dataset_dir):
        os.rmdir(dataset_dir)
        return
    raise builder_lib.BuilderConfigError(
        f"{dataset_dir} exists but holds no dataset_info.json (a build that did not finish?); "
        "move it away or delete it, then build again")


def build_dataset(manual_dir, data_dir, *, num_workers=1, beam_pipeline_options=None, **config_options):
    """Builds (or reuses) the dataset and returns a BuildSummary.

    ``config_options`` are the ImagenetArchiveConfig fields: class_set,
    class_list, images_per_class, file_list, validation_fraction,
    max_bad_image_fraction (and optionally name).
    """
    manual_dir, data_dir = os.path.abspath(manual_dir), os.path.abspath(data_dir)
    config = builder_lib.make_config(**config_options)
    options = beam_options(num_workers, beam_pipeline_options)
    plan = builder_lib.plan_build(manual_dir, config)  # bad input fails before TFDS creates any folder
    _check_writable(data_dir)
    # TFDS reads an existing version folder as soon as the builder is made.
    _check_version_folder(os.path.join(data_dir, DATASET, config.name, str(builder_lib.Builder.VERSION)))
    builder = builder_lib.Builder(config=builder_lib.config_for_builder(config), data_dir=data_dir)
    dataset_dir = str(builder.data_dir)
    if not os.path.realpath(dataset_dir).startswith(os.path.realpath(data_dir) + os.sep):
        raise builder_lib.BuilderConfigError(f"the dataset folder {dataset_dir} would be outside data_dir {data_dir}")
    builder.local_workers = num_workers if options is None else 1
    builder.given_plan = plan
    reused = os.path.isdir(dataset_dir)
    start = time.monotonic()
    with _removing_what_a_failed_build_created(data_dir, dataset_dir):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, beam_options=options))
    seconds = time.monotonic() - start
    report = builder_lib.read_report(builder.data_dir) or {}
    return BuildSummary(
        dataset_name=f"{DATASET}/{config.name}", data_dir=data_dir, dataset_dir=dataset_dir,
        examples={name: split.num_examples for name, split in builder.info.splits.items()},
        bad_images=builder_lib.bad_image_count(report), reencoded=len(report.get("reencoded", [])),
        skipped_members=len(report.get("skipped_members", [])), problems=len(report.get("problems", [])),
        layout=report.get("layout", "unknown"), notes=report.get("notes", ""),
        seconds=seconds, num_workers=builder.workers_used if options is None else num_workers, reused=reused, corrections=report.get("counts", {}))


def main(args, program_flags):
    del args  # every setting is a flag
    arguments = program_flags.build_arguments()
    try:
        summary = _build_quietly(arguments)
    except OSError as error:  # an unreadable manual_dir file, a read-only or full data_dir
        where = f" {error.filename}" if error.filename else ""
        raise bwtf.UserError(f"cannot read or write{where}: {error.strerror or error}; "
                             "check the permissions and free space of manual_dir and data_dir") from None
    except KeyboardInterrupt:
        print("bwtf-build-data: stopped before the end; the workers were stopped and nothing was written",
              file=sys.stderr)
        sys.exit(130)
    print(summary.text())


def _build_quietly(arguments):
    """build_dataset, with TFDS's progress bars and announcements (on stdout) kept off the console."""
    if program.verbose():
        return build_dataset(**arguments)
    # The summary says what was built. The builder reads only local files: no GCS lookups.
    tfds.disable_progress_bar()
    tfds.core.utils.gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access
    with contextlib.redirect_stdout(io.StringIO()) as announcements:
        summary = build_dataset(**arguments)
    absl_logging.info("TFDS: %s", announcements.getvalue().strip(), extra=bwtf.FILE_ONLY)
    return summary


def run():
    # The flags are defined only when the program runs, so that importing
    # build_dataset never claims generic flag names such as --data_dir.
    from bwtf.data import _build_flags

    flags.mark_flags_as_required(["manual_dir", "data_dir"])
    # SIGTERM (scancel, a batch system's time limit, kill) unwinds like Ctrl-C,
    # so the worker processes are stopped and partial files removed.
    signal.signal(signal.SIGTERM, _raise_interrupted)
    program.run(functools.partial(main, program_flags=_build_flags), program.Program(
        name="bwtf-build-data", doc=__doc__, usage="bwtf-build-data --manual_dir=DIR --data_dir=DIR [flags]",
        flag_groups=(("Build", _build_flags.HOLDERS),)))


def _raise_interrupted(signum, _frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")


if __name__ == "__main__":
    run()

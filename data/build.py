"""Builds the TFDS dataset `imagenet_archive` from the ImageNet archives in manual_dir.

    bwtf-build-data --manual_dir=/lustre/imagenet --data_dir=/lustre/tfds \\
        [--num_workers=8] [--class_set=present] [--images_per_class=100] [--flagfile=build.flags]

With --num_workers above 1 on one node, that many local processes read,
encode and write the shards (the builder's ``_parallel`` engine); the files
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
            f"unsafe tar members skipped: {self.skipped_members}; other problems: {self.problems}",
            f"report: {os.path.join(self.dataset_dir, builder_lib.REPORT_FILE)}",
            f"time: {self.seconds:.1f} s, {self.images_per_second:.1f} images/s, {self.num_workers} worker(s)",
        ]
        return "\n".join(lines)


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


@contextlib.contextmanager
def _removing_new_empty_folders(folder, stop_at):
    """On failure, removes ``folder`` and its parents below ``stop_at`` if they were created empty.

    TFDS creates <data_dir>/imagenet_archive/<config>/ before it starts; a
    build that fails must not leave those behind as if something was built.
    """
    existing = set()
    path = folder
    while path.startswith(stop_at) and path != stop_at:
        if os.path.isdir(path):
            existing.add(path)
        path = os.path.dirname(path)
    try:
        yield
    except BaseException:
        path = folder
        while path.startswith(stop_at) and path != stop_at and path not in existing:
            try:
                os.rmdir(path)  # only succeeds when empty
            except OSError:
                break
            path = os.path.dirname(path)
        raise


def build_dataset(manual_dir, data_dir, *, num_workers=1, beam_pipeline_options=None, **config_options):
    """Builds (or reuses) the dataset and returns a BuildSummary.

    ``config_options`` are the ImagenetArchiveConfig fields: class_set,
    class_list, images_per_class, file_list, validation_fraction,
    max_bad_image_fraction (and optionally name).
    """
    manual_dir, data_dir = os.path.abspath(manual_dir), os.path.abspath(data_dir)
    config = builder_lib.make_config(**config_options)
    options = beam_options(num_workers, beam_pipeline_options)
    builder_lib.detect_layout(manual_dir)  # fails before TFDS creates any folder
    builder = builder_lib.Builder(config=builder_lib.config_for_builder(config), data_dir=data_dir)
    builder.local_workers = num_workers if options is None else 1
    reused = os.path.isdir(builder.data_dir)
    start = time.monotonic()
    with _removing_new_empty_folders(os.path.dirname(str(builder.data_dir)), stop_at=data_dir):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, beam_options=options))
    seconds = time.monotonic() - start
    report = builder_lib.read_report(builder.data_dir) or {}
    return BuildSummary(
        dataset_name=f"{DATASET}/{config.name}", data_dir=data_dir, dataset_dir=str(builder.data_dir),
        examples={name: split.num_examples for name, split in builder.info.splits.items()},
        bad_images=len(report.get("bad_images", [])), reencoded=len(report.get("reencoded", [])),
        skipped_members=len(report.get("skipped_members", [])), problems=len(report.get("problems", [])),
        layout=report.get("layout", "unknown"), notes=report.get("notes", ""),
        seconds=seconds, num_workers=num_workers, reused=reused)


def main(args, program_flags):
    del args  # every setting is a flag
    arguments = program_flags.build_arguments()
    if program.verbose():
        print(build_dataset(**arguments).text())
        return
    # TFDS's progress bars and announcements (on stdout) are not for this console: the
    # summary says what was built. The builder reads only local files: no GCS lookups.
    tfds.disable_progress_bar()
    tfds.core.utils.gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access
    with contextlib.redirect_stdout(io.StringIO()) as announcements:
        summary = build_dataset(**arguments)
    absl_logging.info("TFDS: %s", announcements.getvalue().strip(), extra=bwtf.FILE_ONLY)
    print(summary.text())


def run():
    # The flags are defined only when the program runs, so that importing
    # build_dataset never claims generic flag names such as --data_dir.
    from bwtf.data import _build_flags

    flags.mark_flags_as_required(["manual_dir", "data_dir"])
    program.run(functools.partial(main, program_flags=_build_flags), program.Program(
        name="bwtf-build-data", doc=__doc__, usage="bwtf-build-data --manual_dir=DIR --data_dir=DIR [flags]",
        flag_groups=(("Build", _build_flags.HOLDERS),)))


if __name__ == "__main__":
    run()

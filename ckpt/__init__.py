"""bwtf.ckpt: checkpoints gathered on the chief, committed atomically, verifiable.

With parameter servers, TensorFlow's default Estimator saver places SaveV2 and
MergeV2Checkpoints on each ``/job:ps`` task, so every ps writes its own shards
to its own view of the filesystem; a job killed at its walltime then leaves a
checkpoint nobody can use. This package replaces that saver: every variable is
read to the chief and written by the chief, in groups of bounded size, into a
temporary directory that is committed atomically (see ARCHITECTURE.md).

Public API (import as ``from bwtf import ckpt``)::

    ckpt.EXIT_REQUEUE = 75   # EX_TEMPFAIL: "stopped for walltime/signal after a
                             # final save; requeue me". train.py exits with it.
    ckpt.EXIT_FENCED = 73    # EX_CANTCREAT: a chief fenced off by a newer owner
                             # of its model_dir; wrote nothing more; no requeue.
    ckpt.FencedError         # raised by a save/prune of a superseded writer;
                             # .exit_code == EXIT_FENCED
    ckpt.take_ownership(model_dir) -> CheckpointRef | None
        the chief, before training: model_dir writable, ownership taken (an
        older writer is fenced), LATEST and TF's checkpoint file repaired to
        name the newest intact checkpoint, which is returned.
    ckpt.install_estimator_step_reader(full=True)
        every training task, before Estimator.train: its "max_steps already
        saved" decision reads the newest intact checkpoint, not the pointer.
    ckpt.final_checkpoint_step(model_dir, train_steps) -> int | None
        a worker: the step of an intact checkpoint (verified in full) at or
        past train_steps, i.e. the chief has finished; quiet; None if unreadable.
    ckpt.repair_pointers(model_dir) -> CheckpointRef | None
    ckpt.resolve_checkpoint(path) -> CheckpointRef | None
        a model_dir (newest intact), ckpt-<N> dir or prefix inside one,
        verified (cached per manifest); CorruptCheckpointError if not intact.
    ckpt.CheckpointPolicy(save_steps=None, save_secs=None, keep_last=5,
                          keep_every_hours=None, max_group_bytes=256 MiB,
                          walltime_margin_secs=120.0,
                          stop_signals=(SIGTERM, SIGUSR1))   # frozen dataclass
    ckpt.gathered_scaffold(model_dir, policy, device=None, quiet_restores=False, snapshots=True,
                           **scaffold_kwargs)
        -> tf.compat.v1.train.Scaffold whose saver is a GatheredSaver; call it
           inside an Estimator model_fn (any mode). Save and restore ops run on
           ``device`` (the chief's CPU, "/job:chief/task:0/device:CPU:0";
           None = the current device scope).
    ckpt.chief_hooks(model_dir, scaffold, policy) -> list[SessionRunHook]
        periodic gathered save, a final save in end(), and the stop hook (on
        policy.stop_signals or when the remaining walltime drops below
        policy.walltime_margin_secs: save at the current step, request stop).
        Run the Estimator with RunConfig(save_checkpoints_steps=None,
        save_checkpoints_secs=None) so the stock CheckpointSaverHook is never made.
    ckpt.stop_requested() -> str | None
        after training returns: why the stop hook stopped ("SIGTERM",
        "SIGUSR1", "walltime") or None. The one record per process: the
        chief's hook and the other tasks' stop hooks both write it
        (``ckpt.record_stop(reason)``; ``None`` clears it as training begins).
    ckpt.latest_intact_checkpoint(model_dir, full=True) -> CheckpointRef | None
        CheckpointRef(.path, .step, .directory); .path is a prefix usable by
        tf.train.load_checkpoint and Saver.restore. Skips corrupt and
        uncommitted checkpoints with a warning that names the reason. The one
        verified reader: a checkpoint's bytes are checked once per process
        (keyed by its manifest), however many callers ask.
    ckpt.GatheredSaver(model_dir, policy, device=None, var_list=None, snapshots=True,
                       quiet_restores=False)
        the saver itself (Saver-compatible: build/save/restore/saver_def/...);
        plus save_async(session) -> step, wait(), poll(), last_restored
        ((path, step) of the last restore, after any fallback).
    ckpt.gated_update(build_update, stripe=0, after=()) -> Operation
        builds a training update (``build_update()``, e.g. apply_gradients)
        behind this task's update gate, taken once ``after`` (the gradients)
        is computed: a GatheredSaver snapshot never sees half of an update,
        so a checkpoint holds one step under asynchronous workers. Give each
        worker its own ``stripe`` (its index). bwtf's model_fn does this.
    ckpt.verify_checkpoint(directory, full=True) -> None
        raises CorruptCheckpointError naming the reason unless intact.
    ckpt.list_checkpoints(model_dir) -> list[CheckpointStatus]
    ckpt.prune(model_dir, policy, dry_run=False, in_background=None,
               ownership=None) -> list[str]      # removed directories; without
        # ownership it refuses (CheckpointError) while a live writer owns model_dir
    ckpt.require_writable_model_dir(model_dir)   # raises CheckpointError early
    ckpt.remaining_walltime_secs(environ=None) -> float | None
    ckpt.CheckpointError                         # user-facing checkpoint problems
    ckpt.WalltimeEnvError(CheckpointError)       # malformed scheduler variables
    ckpt.CorruptCheckpointError(CheckpointError) # a checkpoint that is not intact

Exit codes: the CLI exits 1 when ``verify`` finds the newest checkpoint not
intact and 2 on bad input. Crash tests set ``BWTF_CKPT_FAILPOINT=<stage>[:n]``
to SIGKILL the writer at a named stage of a save (see _failpoints.py).

Walltime sources, first match wins: ``BWTF_WALLTIME_END`` (epoch seconds),
``SLURM_JOB_END_TIME`` (epoch seconds, Slurm >= 21.08), PBS ``PBS_WALLTIME``
(seconds) counted from ``PBS_JOB_START``/``PBS_JOBSTART`` epoch seconds (or from
process start when PBS gives no start time).

On-disk layout: ``<model_dir>/ckpt-<N>/model.ckpt-<N>.{index,data-*}`` plus
``MANIFEST.json``; ``<model_dir>/checkpoint`` (TF's state file, relative paths)
and ``<model_dir>/LATEST`` (bwtf's pointer). The files are TF's V2 format, so
``tf.train.latest_checkpoint``, ``tf.train.load_checkpoint``, Estimator restore
and warm start keep working.

Importing this package does not import TensorFlow; the names that need it load
their module on first use, so ``python -m bwtf.ckpt list`` stays fast.
Saving: ``GatheredSaver.save_async(session)`` copies every variable into a
snapshot buffer on its ps (one session.run) and commits in a background
thread; ``save`` is synchronous and durable. The chief's hook saves
periodically with save_async and at the end/stop synchronously.
This package leaves out: TF2 object-based checkpoints (tf.train.Checkpoint).
"""
import importlib

# Names served lazily: name -> module that defines it.
_LAZY = {
    "EXIT_REQUEUE": "bwtf.ckpt.policy",
    "EXIT_FENCED": "bwtf.ckpt.policy",
    "FencedError": "bwtf.ckpt.errors",
    "resolve_checkpoint": "bwtf.ckpt.commit",
    "repair_pointers": "bwtf.ckpt.commit",
    "take_ownership": "bwtf.ckpt.startup",
    "install_estimator_step_reader": "bwtf.ckpt.startup",
    "final_checkpoint_step": "bwtf.ckpt.startup",
    "CheckpointPolicy": "bwtf.ckpt.policy",
    "CheckpointError": "bwtf.ckpt.errors",
    "WalltimeEnvError": "bwtf.ckpt.errors",
    "CorruptCheckpointError": "bwtf.ckpt.errors",
    "CheckpointRef": "bwtf.ckpt.commit",
    "CheckpointStatus": "bwtf.ckpt.commit",
    "latest_intact_checkpoint": "bwtf.ckpt.commit",
    "verify_checkpoint": "bwtf.ckpt.commit",
    "list_checkpoints": "bwtf.ckpt.commit",
    "require_writable_model_dir": "bwtf.ckpt.commit",
    "prune": "bwtf.ckpt.retention",
    "remaining_walltime_secs": "bwtf.ckpt.walltime",
    "StopConditions": "bwtf.ckpt.walltime",
    "gathered_scaffold": "bwtf.ckpt.saver",
    "GatheredSaver": "bwtf.ckpt.saver",
    "gated_update": "bwtf.ckpt.saver",
    "chief_hooks": "bwtf.ckpt.hooks",
    "stop_requested": "bwtf.ckpt.walltime",
    "record_stop": "bwtf.ckpt.walltime",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'bwtf.ckpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


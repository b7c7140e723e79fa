"""GatheredSaver: every variable is read to the chief and written by the chief.

TF's default Estimator saver is ``Saver(sharded=True)``, which puts one SaveV2
and MergeV2Checkpoints per variable device, i.e. on every ``/job:ps`` task:
each ps writes its shards to its own view of the filesystem. Here every
SaveV2, MergeV2Checkpoints and RestoreV2 runs on ``device`` (the chief's CPU);
only the variable reads and the assignments run on the ps, and the values
travel over gRPC.

Bounded memory: the variables are split into groups of at most
``policy.max_group_bytes / 2`` (a larger variable is a group of its own). Each
group is gathered and written in its own ``session.run`` into its own shard,
two at a time (so the gather of one overlaps the write of the other), so at
most ``max_group_bytes`` of gathered values are resident on the chief; one
MergeV2Checkpoints then joins the shards into the final prefix (a model that
fits one group is written straight to it). Each shard's data file is sealed
as soon as it is written: fsynced and checksummed in the background while the
next groups are gathered, so the commit at the end has little left to do.
Restore reads and assigns group by group, also two at a time.

One step: asynchronous workers update the ps while the chief saves. Each
worker's update is built under ``gated_update``: it takes one of
``_GATE_STRIPES`` mutexes on the global step's ps (its own stripe, so
workers never wait for each other) once its gradients are computed, and
releases it after the update and the global step increment. The snapshot
takes every stripe (in order, so two snapshots cannot deadlock), reads and
copies every variable, and releases them: no update is half applied in it.
Under SyncReplicasOptimizer the chief's queue runner applies the aggregated
update behind a gate the same way (bwtf.estimator.training.sync_replicas).

Restore verifies the whole checkpoint (sizes and the manifest's checksum of
every file) before it returns: the cheap size check first, the full checksum
in a thread overlapped with RestoreV2. If the checksum fails, the variables
are restored again from the newest intact checkpoint (with a warning), so
when restore() returns they always hold a checkpoint that fully verified.
The files stay TF's V2 format, so stock readers, Estimator restore and warm
start work, and a checkpoint written with N ps restores onto M ps or into a
single process (slices are re-cut by name).

On object stores each group's data file is streamed instead of sealed:
uploaded to its final object as soon as it is written and emptied locally
(commit.PendingCheckpoint.stream), in the group's own thread, so local
staging never holds more than the groups in flight and the index.

Saves into model_dir go through the commit protocol (commit.py); saves
elsewhere (a SavedModel's ``variables/variables``) are written in place.
Left out: TF2 object-based checkpoints and meta-graph files next to each
checkpoint (the graph is rebuilt from code; export writes its own).
"""
from concurrent import futures
import hashlib
import numbers
import os
import threading
import shutil
import time

from absl import logging as log
import tensorflow as tf
from tensorflow.python.training.saving import saveable_object_util

import bwtf

from bwtf.ckpt import _failpoints
from bwtf.ckpt import commit
from bwtf.ckpt import errors
from bwtf.ckpt import fence
from bwtf.ckpt import retention
from bwtf.ckpt import storage as storage_lib


# Groups in flight at once; each group gets max_group_bytes / _IN_FLIGHT.
_IN_FLIGHT = 2
# Update gates (mutexes on the global step's ps): workers hash onto them.
_GATE_STRIPES = 16
# A snapshot that cannot take every gate in this long fails (a wedged worker).
_SNAPSHOT_TIMEOUT_MS = 600 * 1000


def _gate_mutex(stripe):
    return tf.raw_ops.MutexV2(container="", shared_name=f"bwtf_update_gate_{stripe}")


def _gate_device():
    """The global step's device in a parameter-server graph; None where there is no ps (one process)."""
    global_step = tf.compat.v1.train.get_global_step()
    return (global_step.device or None) if global_step is not None else None


def gated_update(build_update, stripe=0, after=()):
    """Builds one training update so that no checkpoint snapshot sees half of it.

    ``build_update()`` makes the update ops (e.g. ``optimizer.apply_gradients``
    with the global step increment); they run while this task's gate (mutex
    ``stripe % _GATE_STRIPES`` on the global step's ps) is held, and the gate
    is taken only once every tensor or op in ``after`` (the gradients) is
    computed. Pass gradients that already sit on their variables' ps (see
    bwtf.estimator.model_fn): ``build_update()`` runs under the gate's device,
    and the optimizer puts each variable's update beside it, so nothing of
    the gated part runs on the worker, and a worker that freezes (SIGSTOP, a
    suspended job) while its gate is held cannot keep it. A GatheredSaver's snapshot
    takes every gate, so it lands between whole updates: every variable and
    the global step of one step. Give each worker its own ``stripe`` (its
    index in the cluster) and workers never wait for each other. Returns the
    op to run as the train op. Without a global step, ``build_update()`` as is.
    """
    device = _gate_device()
    if device is None:
        return build_update()
    waits = [getattr(t, "op", t) for t in after if t is not None]
    with tf.compat.v1.name_scope("bwtf_update_gate"):
        with tf.compat.v1.device(device), tf.control_dependencies(waits):
            lock = tf.raw_ops.MutexLock(mutex=_gate_mutex(stripe % _GATE_STRIPES))
    with tf.control_dependencies([lock]), tf.compat.v1.device(device):
        update = build_update()
    with tf.compat.v1.name_scope("bwtf_update_gate"):
        with tf.compat.v1.device(device), tf.control_dependencies([update]):
            release = tf.raw_ops.ConsumeMutexLock(mutex_lock=lock)
    with tf.control_dependencies([release]):
        return tf.group(update, name="gated_update")


def _take_every_gate(device):
    """Every stripe's MutexLock, taken one after the other (a fixed order)."""
    locks = []
    with tf.compat.v1.device(device):
        for stripe in range(_GATE_STRIPES):
            with tf.control_dependencies(locks[-1:]):
                locks.append(tf.raw_ops.MutexLock(mutex=_gate_mutex(stripe)))
    return locks


def _fresh_read(saveable, spec, tensor):
    """A read of the saved value made now (inside the caller's control
    dependencies), not the one the saveable made when it was built."""
    if callable(getattr(spec, "_tensor", None)):  # resource variables: a read per access
        return spec.tensor
    handle = getattr(saveable, "handle_op", None)
    if handle is not None and handle.dtype == tf.resource:
        with tf.compat.v1.device(handle.device):
            return tf.raw_ops.ReadVariableOp(resource=handle, dtype=tensor.dtype)
    return tf.identity(tensor)


def _full_shape(spec, tensor):
    if spec.slice_spec:
        dims = spec.slice_spec.split(" ")[:-1]
        return [int(d) for d in dims]
    return tensor.shape.as_list()


def _group(saveables, max_group_bytes):
    """Splits (saveable, tensors) pairs into runs of at most max_group_bytes."""
    groups, current, current_bytes = [], [], 0
    for saveable, tensors in saveables:
        size = 0
        for t in tensors:
            n = t.shape.num_elements()
            size += max_group_bytes if n is None else n * max(t.dtype.size, 1)
        if current and current_bytes + size > max_group_bytes:
            groups.append(current)
            current, current_bytes = [], 0
        current.append((saveable, tensors))
        current_bytes += size
    if current:
        groups.append(current)
    return groups


class GatheredSaver:
    """A tf.compat.v1.train.Saver stand-in whose file I/O happens on one device.

    Duck-types what Scaffold.finalize, SessionManager, CheckpointSaverHook and
    SavedModelBuilder use: build(), save(), restore(), saver_def,
    last_checkpoints, recover_last_checkpoints(), export_meta_graph().
    """

    def __init__(self, model_dir, policy, device=None, var_list=None, snapshots=True, quiet_restores=False):
        self._store = commit.as_storage(model_dir)
        self._policy = policy
        self._device = device
        self._var_list = var_list
        self._snapshots = snapshots  # False: a restore-only saver adds no buffers to the graph
        self._built = False
        self._last_checkpoints = []
        self.last_restored = None  # (path, step) of the last restore
        # Evaluation and export restore as routine; their result lines name the step.
        self._restore_log_extra = bwtf.FILE_ONLY if quiet_restores else None
        self.saver_def = None
        # Old checkpoints are unlinked off the save's path (see retention.py).
        self._deleter = futures.ThreadPoolExecutor(1, thread_name_prefix="bwtf-ckpt-prune")
        # save_async commits here, one save at a time.
        self._writer = futures.ThreadPoolExecutor(1, thread_name_prefix="bwtf-ckpt-write")
        self._inflight = None
        self._inflight_lock = threading.Lock()
        self._ownership = None
        self.last_stall_secs = self.last_commit_secs = None

    # -- graph construction -------------------------------------------------

    def build(self):
        if self._built:
            return
        var_list = self._var_list
        if var_list is None:
            var_list = (tf.compat.v1.global_variables()
                        + tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.SAVEABLE_OBJECTS))
        saveables = saveable_object_util.validate_and_slice_inputs(
            saveable_object_util.op_list_to_dict(var_list))
        with tf.compat.v1.name_scope("bwtf_gathered_saver"), tf.compat.v1.device(self._device):
            self._build_ops(saveables)
        self._built = True

    def _build_ops(self, saveables):
        self._filename = tf.compat.v1.placeholder_with_default("model", [], name="filename")
        self._shard_prefix = tf.compat.v1.placeholder(tf.string, [], name="shard_prefix")
        self._shard_list = tf.compat.v1.placeholder(tf.string, [None], name="shard_list")
        pairs = [(s, [spec.tensor for spec in s.specs]) for s in saveables]
        self._expected = {}
        for saveable, tensors in pairs:
            for spec, tensor in zip(saveable.specs, tensors):
                self._expected[spec.name] = _full_shape(spec, tensor)
        snapshot_pairs = self._build_snapshot(pairs) if self._snapshots else pairs
        group_bytes = max(1, self._policy.max_group_bytes // _IN_FLIGHT)
        save_groups = _group(snapshot_pairs, group_bytes)
        self._group_saves = [self._save_op(self._shard_prefix, group) for group in save_groups]
        self._staging_bytes = _staging_bound(save_groups, len(self._expected))
        self._group_restores = [self._restore_op(group) for group in _group(pairs, group_bytes)]
        self._merge = tf.raw_ops.MergeV2Checkpoints(
            checkpoint_prefixes=self._shard_list, destination_prefix=self._filename,
            delete_old_dirs=True)
        # One-run save/restore ops for stock tools that drive a Saver through
        # its SaverDef (SavedModel loading); they are not memory-bounded.
        with tf.control_dependencies([self._save_op(self._filename, pairs)]):
            save_all = tf.identity(self._filename, name="save_all")
        restore_all = tf.group(*self._group_restores, name="restore_all")
        self.saver_def = tf.compat.v1.train.SaverDef(
            filename_tensor_name=self._filename.name, save_tensor_name=save_all.name,
            restore_op_name=restore_all.name, max_to_keep=self._policy.keep_last,
            sharded=False, version=tf.compat.v1.train.SaverDef.V2,
            keep_checkpoint_every_n_hours=self._policy.keep_every_hours or 10000.0)

    def _build_snapshot(self, pairs):
        """Snapshot buffers: one per saved tensor, on that tensor's own device.

        ``self._snapshot`` takes every update gate (see gated_update), copies
        each variable into its buffer (a local copy on each ps) and releases
        the gates, in one session.run; the group saves then read the buffers,
        so a checkpoint holds the values of one step however long the gather
        takes, and training only waits for the copy. The buffers are
        resources outside every collection: no initializer (a worker's local
        init) ever touches them, and only the chief's session runs them.
        Returns ``pairs`` with each tensor replaced by a read of its buffer.
        """
        assigns, snapshot_pairs, self._snapshot_step = [], [], None
        global_step = tf.compat.v1.train.get_global_step()
        step_name = global_step.op.name if global_step is not None else None
        gate_device = _gate_device()
        locks = _take_every_gate(gate_device) if gate_device is not None else []
        for saveable, tensors in pairs:
            device = getattr(saveable.op, "device", None) or tensors[0].device
            reads = []
            for spec, tensor in zip(saveable.specs, tensors):
                key = f"{spec.name}|{spec.slice_spec}|{tensor.dtype.name}|{tensor.shape}"
                with tf.control_dependencies(locks[-1:]):
                    value = _fresh_read(saveable, spec, tensor)
                with tf.compat.v1.device(device):
                    handle = tf.raw_ops.VarHandleOp(
                        dtype=tensor.dtype, shape=tensor.shape, container="",
                        shared_name="bwtf_snapshot_" + hashlib.sha1(key.encode()).hexdigest()[:16])
                    assign = tf.raw_ops.AssignVariableOp(resource=handle, value=value)
                    with tf.control_dependencies([assign]):
                        copied = tf.raw_ops.ReadVariableOp(resource=handle, dtype=tensor.dtype)
                    read = tf.raw_ops.ReadVariableOp(resource=handle, dtype=tensor.dtype)
                read.set_shape(tensor.shape)
                assigns.append(assign)
                reads.append(read)
                if spec.name == step_name:
                    self._snapshot_step = copied
            snapshot_pairs.append((saveable, reads))
        releases = []
        if locks:
            with tf.compat.v1.device(gate_device), tf.control_dependencies(assigns):
                releases = [tf.raw_ops.ConsumeMutexLock(mutex_lock=lock) for lock in locks]
        self._snapshot = tf.group(*(assigns + releases), name="snapshot")
        return snapshot_pairs

    def snapshot(self, sess):
        """Copies every variable into its buffer (one session.run); returns
        the global step the copy holds (None without a global step)."""
        self.build()
        if not self._snapshots:
            return None
        fetches = [self._snapshot] + ([self._snapshot_step] if self._snapshot_step is not None else [])
        try:
            values = sess.run(fetches, options=tf.compat.v1.RunOptions(
                timeout_in_ms=_SNAPSHOT_TIMEOUT_MS))
        except tf.errors.DeadlineExceededError as e:
            raise errors.CheckpointError(
                f"The checkpoint snapshot could not take every update gate within "
                f"{_SNAPSHOT_TIMEOUT_MS // 1000} s: a worker seems stuck inside its update "
                "(see bwtf.ckpt.gated_update). Check the workers' logs") from e
        _failpoints.reach("snapshot_taken")
        return int(values[1]) if len(values) > 1 else None

    @staticmethod
    def _save_op(prefix, group):
        names, slices, tensors = [], [], []
        for saveable, group_tensors in group:
            for spec, tensor in zip(saveable.specs, group_tensors):
                names.append(spec.name)
                slices.append(spec.slice_spec)
                tensors.append(tensor)
        return tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                                 shape_and_slices=slices, tensors=tensors)

    def _restore_op(self, group):
        names = [spec.name for s, _ in group for spec in s.specs]
        slices = [spec.slice_spec for s, _ in group for spec in s.specs]
        dtypes = [spec.dtype for s, _ in group for spec in s.specs]
        restored = tf.raw_ops.RestoreV2(prefix=self._filename, tensor_names=names,
                                        shape_and_slices=slices, dtypes=dtypes)
        assigns, i = [], 0
        for saveable, _ in group:
            n = len(saveable.specs)
            assigns.append(saveable.restore(restored[i:i + n], None))
            i += n
        return tf.group(*assigns)

    # -- saving ---------------------------------------------------------------

    def write_groups(self, sess, prefix, seal=None):
        """Gathers group by group into shards, then merges them at ``prefix``.

        ``seal(path, name)``, if given, is called with each data file once
        written (in the writing thread, so a slow seal holds its group in
        flight) and the name the merge gives it: each group's SaveV2 writes
        exactly one data file, and MergeV2Checkpoints numbers the shards in
        the order of the prefixes it is given, renaming group i's file to
        ``<prefix>.data-<i>-of-<count>`` without reading it.
        """
        self.build()
        count = len(self._group_saves)
        shards = [f"{prefix}_temp/part-{i:05d}-of-{count:05d}" for i in range(count)]
        if count == 1:
            shards = [prefix]  # nothing to merge: write the final files directly
        base = os.path.basename(prefix)

        def write_one(index):
            sess.run(self._group_saves[index], {self._shard_prefix: shards[index]})
            if seal is not None:
                paths = tf.io.gfile.glob(f"{shards[index]}.data-*")
                if len(paths) != 1:
                    raise errors.CheckpointError(
                        f"group {index} of the checkpoint at {prefix} wrote {len(paths)} data "
                        "files; expected one (TensorFlow's SaveV2 changed?)")
                seal(paths[0], f"{base}.data-{index:05d}-of-{count:05d}")
            _failpoints.reach("group_written")

        with futures.ThreadPoolExecutor(_IN_FLIGHT) as pool:
            list(pool.map(write_one, range(count)))
        if count > 1:
            sess.run(self._merge, {self._shard_list: shards, self._filename: prefix})
        _failpoints.reach("merged")

    def save(self, sess, save_path=None, global_step=None, latest_filename=None,
             meta_graph_suffix="meta", write_meta_graph=True, write_state=True,
             strip_default_attrs=False, save_debug_info=False):
        """Saves synchronously: returns once the checkpoint is committed and durable.

        Into model_dir through the commit protocol, elsewhere in place. A
        save still in flight (save_async) is finished first. The checkpoint
        is named after the global step its snapshot holds, unless
        ``global_step`` is an integer, which names it. Returns the checkpoint
        prefix, as tf.compat.v1.train.Saver.save does.
        """
        del latest_filename, meta_graph_suffix, write_meta_graph
        del strip_default_attrs, save_debug_info
        self.wait()
        started = time.monotonic()
        step = self._step_for(sess, global_step, self.snapshot(sess))
        self.last_stall_secs = time.monotonic() - started
        if save_path is not None and not (write_state and self._inside_model_dir(save_path)):
            path = f"{save_path}-{step}" if global_step is not None else save_path
            self.write_groups(sess, path)
            return path
        return self._commit(sess, step, started)

    def save_async(self, sess):
        """Takes the snapshot now and commits it in a background thread.

        Training is blocked only for the snapshot (and for a previous save
        still in flight). Returns the step of the snapshot. A failure of the
        background commit (FencedError included) is raised by the next
        ``poll``, ``wait``, ``save`` or ``save_async``.
        """
        self.wait()
        started = time.monotonic()
        step = self._step_for(sess, None, self.snapshot(sess))
        self.last_stall_secs = time.monotonic() - started
        with self._inflight_lock:
            self._inflight = self._writer.submit(self._commit, sess, step, started)
        return step

    def wait(self):
        """Blocks until the save in flight (if any) is committed; raises its failure."""
        with self._inflight_lock:
            inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.result()

    def poll(self):
        """Raises the failure of a finished background save; never blocks."""
        with self._inflight_lock:
            done = self._inflight is not None and self._inflight.done()
        if done:
            self.wait()

    def _step_for(self, sess, global_step, snapshot_step):
        if isinstance(global_step, numbers.Integral):
            return int(global_step)
        if snapshot_step is not None and (
                global_step is None or global_step is tf.compat.v1.train.get_global_step()):
            return snapshot_step
        return self._step(sess, global_step)

    def _commit(self, sess, step, started):
        if self._ownership is None:  # the chief took it before training; else now
            self._ownership = fence.acquire(self._store)
        pending = commit.PendingCheckpoint(self._store, step, ownership=self._ownership,
                                           staging_root=self._policy.staging_dir,
                                           expected_bytes=self._staging_bytes)
        try:
            self.write_groups(sess, pending.prefix, pending.stream)
            ref = pending.finalize(_describe_variables(pending.prefix), dict(self._policy.manifest_extra))
        except BaseException:
            pending.abort()
            raise
        # Durable and committed here; retention below is the next save's business.
        self.last_commit_secs = time.monotonic() - started
        self._prune(pending.ownership)
        self._last_checkpoints = [p for p in self._last_checkpoints if p != ref.path] + [ref.path]
        size = commit.check(self._store, self._store.path(f"ckpt-{ref.step}"), full=False).size_bytes
        log.info("Saved checkpoint %s (gathered on the chief): step %d, %.1f MiB in %.2f s, "
                 "training blocked %.3f s.", ref.path, step, size / 2**20,
                 self.last_commit_secs, self.last_stall_secs)
        return ref.path

    def _prune(self, ownership):
        """Retention after a commit. Only fencing stops training from here: a
        file that vanished or could not be removed (another process pruning,
        a flaky filesystem) is logged and retried at the next save."""
        try:
            retention.prune(self._store, self._policy, in_background=self._deleter,
                            ownership=ownership)
        except (OSError, errors.CheckpointError) as e:
            log.warning("Retention in %s failed (%s); it is retried after the next save.",
                        self._store.display(self._store.root), e)

    def _inside_model_dir(self, save_path):
        parent = os.path.dirname(str(save_path).rstrip("/"))
        if self._store.is_local:
            return os.path.abspath(parent) == os.path.abspath(self._store.root)
        return commit.as_storage(parent or "/").root == self._store.root

    @staticmethod
    def _step(sess, global_step):
        if global_step is None:
            global_step = tf.compat.v1.train.get_global_step()
            if global_step is None:
                return 0
        if isinstance(global_step, numbers.Integral):
            return int(global_step)
        return int(tf.compat.v1.train.global_step(sess, global_step))

    # -- restoring ------------------------------------------------------------

    def restore(self, sess, save_path):
        """Restores ``save_path``; a bwtf checkpoint that is broken or vanishes
        falls back to the newest intact one in its model_dir, with a warning
        naming the reason. ``last_restored`` then tells which (path, step)
        the variables hold, so callers record the step actually restored."""
        if save_path is None:
            raise ValueError("Can't load save_path when it is None.")
        self.build()
        save_path = str(save_path)
        if _bwtf_checkpoint(save_path) is None:  # a stock TF checkpoint: nothing to verify
            self._restore_groups(sess, save_path, save_path)
            self.last_restored = (save_path, None)
            return
        tried = []
        while True:
            try:
                step = self._restore_verified(sess, save_path)
                break
            except errors.CorruptCheckpointError as e:
                tried.append(save_path)
                # Values from a broken file may have been assigned: replace them.
                fallback = _fallback(save_path, str(e))
                if fallback in tried:
                    raise
                log.warning("Checkpoint %s cannot be restored (%s); restoring %s instead.",
                            save_path, e, fallback)
                save_path = fallback
        self.last_restored = (save_path, step)
        log.info("Restored %s (group by group, verified).", save_path, extra=self._restore_log_extra)

    def _restore_verified(self, sess, save_path):
        """Restores a bwtf checkpoint while its checksums are verified in a
        thread (local) or on the downloaded copy (object stores: each file is
        read once). Raises CorruptCheckpointError if it is not intact."""
        store, name = _bwtf_checkpoint(save_path)
        directory = store.path(name)
        status = commit.check(store, directory, full=False)
        if not status.intact:
            raise errors.CorruptCheckpointError(status.reason)
        local_prefix, cleanup = save_path, None
        if store.is_local:
            def verify():
                return commit.check(store, directory, full=True)
        else:
            local_prefix, cleanup, manifest = _download(store, directory, self._policy.staging_dir)

            def verify():
                return commit.check_local_copy(store, directory, manifest, cleanup)
        try:
            with futures.ThreadPoolExecutor(1) as pool:
                verified = pool.submit(verify)
                try:
                    self._restore_groups(sess, local_prefix, save_path)
                except (tf.errors.OpError, errors.CheckpointError):
                    # Broken, or deleted under us (retention, another pruner)?
                    # A fresh look decides, not a verification from before.
                    after = commit.check(store, directory, full=False)
                    if verified.result().intact and after.intact:
                        raise
                    raise errors.CorruptCheckpointError(
                        after.reason or verified.result().reason or "vanished") from None
                result = verified.result()
        finally:
            if cleanup:
                shutil.rmtree(cleanup, ignore_errors=True)
        if not result.intact:
            raise errors.CorruptCheckpointError(result.reason)
        return result.step

    def _restore_groups(self, sess, local_prefix, save_path):
        self._check_compatible(local_prefix, save_path)
        with futures.ThreadPoolExecutor(_IN_FLIGHT) as pool:
            list(pool.map(lambda op: sess.run(op, {self._filename: local_prefix}),
                          self._group_restores))

    def _check_compatible(self, local_prefix, save_path):
        try:
            reader = tf.compat.v1.train.NewCheckpointReader(local_prefix)
        except (tf.errors.OpError, ValueError) as e:
            raise errors.CheckpointError(f"Cannot read checkpoint {save_path}: {e}") from e
        shapes = reader.get_variable_to_shape_map()
        missing = sorted(n for n in self._expected if n not in shapes)
        differ = sorted(f"{n} (checkpoint {shapes[n]}, model {self._expected[n]})"
                        for n in self._expected
                        if n in shapes and list(shapes[n]) != list(self._expected[n]))
        if missing or differ:
            parts = []
            if missing:
                parts.append(f"{len(missing)} variables missing ({', '.join(missing[:5])}"
                             + (", ..." if len(missing) > 5 else "") + ")")
            if differ:
                parts.append(f"{len(differ)} with other shapes ({', '.join(differ[:3])})")
            raise errors.CheckpointError(
                f"Checkpoint {save_path} belongs to a different model: {'; '.join(parts)}. "
                "Use a fresh --model_dir for a new model, or warm-start from it instead")

    # -- the rest of the Saver interface -------------------------------------

    @property
    def last_checkpoints(self):
        return list(self._last_checkpoints)

    def recover_last_checkpoints(self, checkpoint_paths):
        self._last_checkpoints = list(checkpoint_paths)

    def set_last_checkpoints_with_time(self, last_checkpoints_with_time):
        self._last_checkpoints = [p for p, _ in last_checkpoints_with_time]

    def as_saver_def(self):
        self.build()
        return self.saver_def

    def to_proto(self, export_scope=None):
        del export_scope
        return self.as_saver_def()

    def export_meta_graph(self, filename=None, collection_list=None, as_text=False,
                          export_scope=None, clear_devices=False,
                          clear_extraneous_savers=False, strip_default_attrs=False,
                          save_debug_info=False):
        return tf.compat.v1.train.export_meta_graph(
            filename=filename,
            graph_def=tf.compat.v1.get_default_graph().as_graph_def(add_shapes=True),
            saver_def=self.as_saver_def(), collection_list=collection_list,
            as_text=as_text, export_scope=export_scope, clear_devices=clear_devices,
            clear_extraneous_savers=clear_extraneous_savers,
            strip_default_attrs=strip_default_attrs, save_debug_info=save_debug_info)


def _group_bytes(group):
    return sum((t.shape.num_elements() or 0) * max(t.dtype.size, 1)
               for _, tensors in group for t in tensors)


def _staging_bound(groups, num_tensors):
    """The most bytes an object-store save holds locally at once: the
    ``_IN_FLIGHT`` largest groups' data files (each is emptied once uploaded,
    before its thread takes the next group) plus the index (a few hundred
    bytes per tensor) and the manifest."""
    largest = sorted((_group_bytes(g) for g in groups), reverse=True)[:_IN_FLIGHT]
    return sum(largest) + 512 * num_tensors + 64 * 1024


def _describe_variables(prefix):
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    return {name: {"shape": list(shape), "dtype": dtypes[name].name}
            for name, shape in sorted(reader.get_variable_to_shape_map().items())}


def _split_dir(save_path):
    directory, _, _ = save_path.rstrip("/").rpartition("/")
    parent, _, name = directory.rpartition("/")
    return parent, directory, name


def _bwtf_checkpoint(save_path):
    """(store, directory name) when save_path is in a ckpt-<N> dir, else None."""
    parent, _, name = _split_dir(save_path)
    if commit.step_of(name) is None or not parent:
        return None
    return storage_lib.Storage(parent), name


def _fallback(save_path, reason):
    parent, directory, _ = _split_dir(save_path)
    ref = commit.latest_intact_checkpoint(storage_lib.Storage(parent))
    if ref is None:
        raise errors.CorruptCheckpointError(
            f"{directory} is not intact ({reason}) and {parent} holds no intact "
            "checkpoint to fall back to. Start from scratch with a fresh model_dir")
    return ref.path


def _download(store, directory, staging_root=None):
    """Downloads an object-store checkpoint once: (local prefix, local dir, manifest)."""
    manifest = commit.read_manifest(store, directory)
    size = sum(meta["size"] for meta in manifest["files"].values())
    local_dir = commit.local_scratch(staging_root, size, "bwtf-ckpt-restore-",
                                     what="restoring this checkpoint (downloaded whole)")
    try:
        for file_name in manifest["files"]:
            store.download(f"{directory}/{file_name}", os.path.join(local_dir, file_name))
    except FileNotFoundError as e:
        shutil.rmtree(local_dir, ignore_errors=True)
        raise errors.CorruptCheckpointError(f"a file vanished while downloading ({e})") from e
    except BaseException:
        # Any other failure (a network error, Ctrl-C): a long-lived evaluator
        # must not keep a partial copy per failed restore.
        shutil.rmtree(local_dir, ignore_errors=True)
        raise
    return os.path.join(local_dir, manifest["prefix"]), local_dir, manifest


def gathered_scaffold(model_dir, policy, device=None, quiet_restores=False, snapshots=True, **scaffold_kwargs):
    """A Scaffold whose saver is a GatheredSaver; call it inside the model_fn.

    ``quiet_restores``: the restore line goes to the full log only, not the
    console. ``snapshots=False`` (a graph that only restores: evaluation,
    serving) adds no snapshot buffers and no update gates.
    """
    if "saver" in scaffold_kwargs:
        raise ValueError("gathered_scaffold makes its own saver; do not pass saver=")
    saver = GatheredSaver(model_dir, policy, device=device, snapshots=snapshots, quiet_restores=quiet_restores)
    return tf.compat.v1.train.Scaffold(saver=saver, **scaffold_kwargs)

"""Retention: which checkpoints and temporary directories to delete.

Keeps the newest ``keep_last`` intact checkpoints, one per ``keep_every_hours``
(by the manifest's creation time) and, always, the newest intact checkpoint.
Corrupt checkpoints older than the newest intact one are deleted with the
rest; corrupt ones newer than it are left for inspection. Temporary
directories are removed only when their writer is dead (see _identity).
The saver deletes in the background: on local stores a checkpoint is first
renamed aside to a temporary name (atomic, so no reader ever sees it half
deleted), then its files are unlinked off the save's path (unlinking hundreds
of MB of fsynced files costs ext4 about as much as writing them).
Only the owner of model_dir deletes (fence.py): the saver checks its
ownership before every deletion, and ``bwtf-ckpt prune`` refuses while a live
process owns model_dir. Checkpoints that are not bwtf's (a symbolic link, a
name like ``ckpt-009``) are never deleted, and a checkpoint that vanishes
under a deletion (another pruner) is simply gone: a race never raises.
It leaves out quotas by bytes: keep counts are what users reason about.
"""
import json
import os
import time
import uuid

from absl import logging as log

from bwtf.ckpt import _identity
from bwtf.ckpt import commit
from bwtf.ckpt import errors
from bwtf.ckpt import fence
from bwtf.ckpt import storage as storage_lib


def plan(statuses, keep_last, keep_every_hours=None):
    """Splits statuses (oldest first) into (keep, delete) lists of CheckpointStatus."""
    intact = [s for s in statuses if s.intact]
    if not intact:
        return list(statuses), []
    newest = intact[-1]
    kept_steps = {s.step for s in intact[-keep_last:]} | {newest.step}
    if keep_every_hours:
        last_kept_time = None
        for status in intact:
            if last_kept_time is None or status.created >= last_kept_time + keep_every_hours * 3600:
                kept_steps.add(status.step)
                last_kept_time = status.created
    keep, delete = [], []
    for status in statuses:
        if status.foreign or status.step in kept_steps or status.step > newest.step:
            keep.append(status)
        else:
            delete.append(status)
    return keep, delete


def stale_temporary_dirs(model_dir, now=None):
    """Temporary checkpoint directories whose writers are dead."""
    store = commit.as_storage(model_dir)
    now = time.time() if now is None else now
    stale = []
    for name in store.listdir(store.root):
        if not commit.TMP_DIR_RE.match(name):
            continue
        path = store.path(name)
        if store.is_link(path):
            continue  # not ours: never followed, never deleted
        try:
            record = json.loads(store.read_bytes(f"{path}/{commit.WRITER}", limit=2**16))
        except (OSError, ValueError, RecursionError, errors.CheckpointError):
            modified = store.modified(path)
            record = None
            if modified is not None and now - modified > _identity.ANONYMOUS_STALE_SECS:
                stale.append(path)
            continue
        if not _identity.is_alive(record, now=now):
            stale.append(path)
    return stale


def prune(model_dir, policy, dry_run=False, in_background=None, ownership=None):
    """Applies ``policy``'s retention to model_dir; returns the removed paths.

    ``ownership`` (fence.Ownership) is checked before every deletion; without
    it (the CLI) prune refuses while a live process owns model_dir, since that
    owner's own retention acts for it. With ``in_background`` (an Executor),
    local checkpoints are renamed aside now and their files removed by it; a
    crash before that finishes leaves a temporary dir of a dead writer, which
    a later prune removes.
    """
    store = commit.as_storage(model_dir)
    ownership = ownership or fence.held(store)
    if ownership is None and not dry_run and fence.owner_is_alive(store):
        raise errors.CheckpointError(
            f"model_dir {store.display(store.root)} is owned by a running writer "
            f"({fence.describe(fence.current_owner(store))}); its own retention "
            "(--keep_checkpoints) prunes it. Prune after it has stopped")
    statuses = commit.list_checkpoints(store, full=False)
    _, delete = plan(statuses, policy.keep_last, policy.keep_every_hours)
    stale = stale_temporary_dirs(store)
    removed = [status.directory for status in delete] + [store.display(p) for p in stale]
    if dry_run:
        return removed
    check = ownership.check if ownership is not None else (lambda action: None)
    for path in stale:
        check(f"deletion of {store.display(path)}")
        log.info("Removing %s: its writer is dead.", store.display(path))
        store.remove_tree(path)
    for status in delete:
        check(f"deletion of {status.directory}")
        _remove_checkpoint(store, status.step, in_background)
    if delete:
        # From a fresh listing: others may have committed or deleted meanwhile.
        check("pointer update")
        commit.repair_pointers(store, force=True)
    return removed


def _remove_checkpoint(store, step, in_background):
    path = store.path(f"ckpt-{step}")
    if in_background is None or not store.atomic_rename:
        store.remove_tree(path)
        return
    aside = store.path(f".tmp-ckpt-{step}-{uuid.uuid4().hex[:12]}")
    try:
        store.rename(path, aside)  # renames a link itself, never its target
    except FileNotFoundError:
        return  # another pruner took it first
    # The dir now belongs to this (live) process, so no other pruner takes it
    # while the thread below works; if this process dies, it is stale. The
    # record is created fresh (O_EXCL, no link followed) and renamed over.
    record = f"{aside}/{commit.WRITER}.{uuid.uuid4().hex[:8]}"
    try:
        fd = storage_lib.open_below(store.root, record, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_identity.current(), f)
        os.replace(record, f"{aside}/{commit.WRITER}")
    except OSError as e:  # an aside dir without a live record is still judged by age
        log.debug("Could not mark %s as being removed (%s).", aside, e)
    in_background.submit(_remove_logging_failure, store, aside)


def _remove_logging_failure(store, path):
    try:
        store.remove_tree(path)
    except OSError as e:  # nobody waits on this thread: say it, a later prune retries
        log.warning("Could not remove %s (%s); a later prune will retry once this "
                    "process has exited.", store.display(path), e)

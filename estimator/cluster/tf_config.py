"""TF_CONFIG: the one place it is written and decoded.

    build({"chief": ["h:1"], "ps": ["h:2"]}, "ps", 0) -> '{"cluster": ..., "task": {"type": "ps", "index": 0}}'
    decode(text) -> object        # TFConfigError for anything json cannot read, or a hostile nesting
    own_task(text) -> ("ps", 0, "h:2") or None   # best effort, for messages about a task

``roles`` validates the decoded value strictly (jobs, indices, addresses);
this module only guarantees that decoding ends in a value or one clear error:
``json`` raises RecursionError on a document nested a few thousand levels deep,
which would otherwise surface as a traceback.

Deliberately left out: validation (``roles``) and reading the environment.
"""
import json

import bwtf

_SHOWN = 200  # characters of a bad TF_CONFIG quoted back to the user


class TFConfigError(bwtf.UserError, ValueError):
    """TF_CONFIG is not a JSON document bwtf can read."""


def build(cluster_spec, task_type, task_id):
    """The TF_CONFIG text of task ``task_type:task_id`` in ``cluster_spec`` ({job: [host:port, ...]})."""
    return json.dumps({"cluster": cluster_spec, "task": {"type": task_type, "index": task_id}})


def decode(text):
    """The JSON value of ``text``; TFConfigError naming the problem otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise TFConfigError(f"TF_CONFIG is not valid JSON ({error}); found {text[:_SHOWN]!r}") from None
    except RecursionError:
        raise TFConfigError(
            f"TF_CONFIG is nested too deeply to be a cluster description; expected "
            f'{{"cluster": {{job: [host:port, ...]}}, "task": {{"type": ..., "index": ...}}}}, '
            f"found {text[:_SHOWN]!r}...") from None


def own_task(text):
    """(type, index, address or None) of the task TF_CONFIG describes, or None when it cannot tell."""
    try:
        config = decode(text or "{}")
        task = config["task"]
        task_type, index = task["type"], task.get("index", 0)
        jobs = config.get("cluster", {})
        address = jobs[task_type][index] if task_type in jobs else None
    except (TFConfigError, KeyError, IndexError, TypeError, AttributeError):
        return None
    if not isinstance(task_type, str) or not isinstance(index, int):
        return None
    return task_type, index, address if isinstance(address, str) else None

"""Exceptions of the checkpoint layer.

Every problem a user can cause or fix (an unwritable model_dir, a corrupt
checkpoint, a malformed scheduler variable) is a CheckpointError, which the
CLI and the training program turn into a one-line message. Bugs stay ordinary
exceptions with tracebacks.
"""
import bwtf


class CheckpointError(bwtf.UserError):
    """A checkpoint problem the user can act on; the message says how."""


class WalltimeEnvError(CheckpointError):
    """A scheduler walltime variable is set but cannot be understood."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint directory exists but is not intact (the message names why)."""


class FencedError(bwtf.FencedWriterError):
    """A newer writer took model_dir over; this one must stop writing.

    Not a CheckpointError (those are bad input, exit 2): the training program
    exits with ``exit_code`` (``bwtf.EXIT_FENCED``), which batch scripts do not
    requeue.
    """


class PolicyError(CheckpointError, ValueError):
    """A CheckpointPolicy with impossible values (the message lists them)."""

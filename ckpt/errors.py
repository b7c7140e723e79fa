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


class PolicyError(CheckpointError, ValueError):
    """A CheckpointPolicy with impossible values (the message lists them)."""

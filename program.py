"""The program shell every bwtf console script runs in: flags, help, logging, and errors to exit codes.

    from bwtf import program

    PROGRAM = program.Program(
        name="bwtf-eval", doc=__doc__, usage="bwtf-eval [flags]",
        flag_groups=(("Evaluation", _EVAL), ("Model", _MODEL)))

    def main(args):            # the positional arguments, flags already parsed
        ...                    # raise a bwtf.UserError for bad input
        return exit_code       # None means 0

    def run():
        program.run(main, PROGRAM)

What the shell does, the same for every program:

* **Flags.** absl parses them; ``--flagfile=FILE`` reads more from a file. A bad
  flag value, an unknown flag or a wrong number of positional arguments is one
  line, ``<name>: error: ...``, and exit 2 (absl alone prints its whole help and
  exits 1).
* **Help.** ``-h``/``--help`` prints the program's docstring (usage, examples,
  exit codes), then its own flags by group, then the few common ones
  (``--flagfile``, ``-v``), and exits 0. ``--helpfull`` adds every absl flag.
* **Errors.** A ``bwtf.UserError`` prints one line and exits with its
  ``exit_code``; anything else is a bug and keeps its traceback.
* **Logging.** One stack, absl's: bwtf logs through ``absl.logging`` (ckpt
  too), and TensorFlow's Python logger and ``warnings`` go through absl's
  handler. The console shows bwtf's own records (INFO and up, short format) and
  errors from anyone; ``log_to_file(path)`` sends the full log, TensorFlow's C++ runtime
  included, to ``path`` as well. ``-v N``/``--verbosity=N`` given on the command
  line turns the filter off: everything reaches the console, as before.

Deliberately left out: subcommand dispatch (a program with subcommands takes
the first positional argument itself) and any program's own flags.
"""
import dataclasses
import logging
import os
import sys
import textwrap
import time
import traceback
from typing import Callable, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging as absl_logging

import bwtf

_HELP_ARGS = ("-h", "--help", "-?", "--helpshort", "-help")
_HELPFULL_ARGS = ("--helpfull",)
_BWTF_ROOT = os.path.dirname(os.path.abspath(__file__)) + os.sep
_CONSOLE = {"stream": None, "verbose": False}
# tf.estimator's own line with an evaluation's metrics ("... precision_at_1 = 0.95 ..."),
# which users and their scripts know from every Estimator program.
_ESTIMATOR_RESULTS = "Saving dict for global step"


@dataclasses.dataclass(frozen=True)
class Program:
    """What the shell needs to know about one console script.

    ``flag_groups`` is ``((title, names), ...)``: a title and the flag names (or
    an object with ``holders``, such as ``_flags.FlagGroup``) shown under it.
    ``args`` is the (min, max) count of positional arguments (max None: any).
    """

    name: str
    doc: str
    usage: str
    flag_groups: Tuple[Tuple[str, object], ...] = ()
    args: Tuple[int, Optional[int]] = (0, 0)
    args_hint: str = "every setting is a --flag"
    args_name: str = "argument"


def _flag_names(group):
    holders = getattr(group, "holders", None)
    if holders is not None:
        return [holder.name for holder in holders.values()]
    return [getattr(item, "name", item) for item in group]


def _describe_flag(flag):
    spelled = f"--[no]{flag.name}" if flag.flag_type() == "bool" else f"--{flag.name}"
    if flag.short_name:
        spelled = f"-{flag.short_name}, {spelled}"
    default = "" if flag.default is None else f" (default: {flag.default_as_str})"
    body = textwrap.fill(f"{flag.help}{default}", width=96, initial_indent="      ",
                         subsequent_indent="      ")
    return f"  {spelled}\n{body}"


def help_text(spec, flag_values=None, full=False):
    """The page ``--help`` prints: docstring, own flags by group, common flags."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    lines = [f"usage: {spec.usage}", "", textwrap.dedent(spec.doc).strip(), ""]
    shown = set()
    for title, group in spec.flag_groups:
        names = [n for n in _flag_names(group) if n in flag_values and n not in shown]
        if not names:
            continue
        lines.append(f"{title} flags:")
        lines += [_describe_flag(flag_values[n]) for n in names]
        lines.append("")
        shown.update(names)
    lines.append("Common flags:")
    lines.append("  --flagfile=FILE\n      Read more flags from FILE, one per line (may be repeated).")
    lines.append("  -v N, --verbosity=N\n      Show every log record on the console, TensorFlow's "
                 "included (N=0: INFO, 1 and up: debug).")
    if full:
        lines += ["", "All flags:", flag_values.get_help()]
    return "\n".join(lines) + "\n"


def fail(spec, message, code=bwtf.EXIT_USAGE):
    """Prints ``<name>: error: <message>`` to the console and exits with ``code``."""
    # One line, whatever the message's own line breaks: a batch log shows it whole.
    _console().write(f"{spec.name}: error: {' '.join(str(message).split())}\n")
    _console().flush()
    sys.exit(code)


def _flags_parser(spec):
    def parse(argv):
        own = argv[1:argv.index("--")] if "--" in argv else argv[1:]
        if any(arg in _HELP_ARGS + _HELPFULL_ARGS for arg in own):
            sys.stdout.write(help_text(spec, full=any(arg in _HELPFULL_ARGS for arg in own)))
            sys.exit(bwtf.EXIT_OK)
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            fail(spec, f"{error} (see {spec.name} --help)")
    return parse


def _check_args(spec, args):
    low, high = spec.args
    if low <= len(args) and (high is None or len(args) <= high):
        return
    if high == 0:
        raise bwtf.UserError(f"unexpected argument(s) {' '.join(args)}; {spec.args_hint} "
                               f"(usage: {spec.usage})")
    count = "one" if low == high == 1 else f"{low}" if low == high else f"{low} or more"
    plural = "" if count == "one" else "s"
    raise bwtf.UserError(f"expected exactly {count} {spec.args_name} argument{plural}, found {len(args)}"
                         f"{': ' + ' '.join(args) if args else ''}; usage: {spec.usage}")


class _ConsoleFilter(logging.Filter):
    """bwtf's own records at INFO and up, the Estimator's evaluation results, anyone's errors.

    Everything passes when verbose.
    """

    def filter(self, record):
        if _CONSOLE["verbose"]:
            return True
        if record.levelno < logging.WARNING and not getattr(record, "console", True):
            return False
        if getattr(record, "console", None) is True:
            return True
        if record.levelno >= logging.ERROR:
            return True
        if record.levelno == logging.INFO and str(record.msg).startswith(_ESTIMATOR_RESULTS):
            return True
        return record.levelno >= logging.INFO and _is_bwtf_source(record.pathname)


def _is_bwtf_source(path):
    """A file of bwtf itself; not a library in a virtualenv that happens to live inside the checkout."""
    if not path.startswith(_BWTF_ROOT):
        return False
    return not {"site-packages", "dist-packages"} & set(path[len(_BWTF_ROOT):].split(os.sep))


class _ConsoleFormatter(logging.Formatter):
    """``12:04:05 message``; warnings and errors say so."""

    def format(self, record):
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{stamp} {level}{record.getMessage()}"


def verbose():
    """True when -v/--verbosity was given: every record reaches the console."""
    return _CONSOLE["verbose"]


def _console():
    return _CONSOLE["stream"] or sys.stderr


def _setup_logging():
    """One stack: every logger and ``warnings`` through absl's handler, filtered for the console."""
    _CONSOLE["verbose"] = flags.FLAGS["verbosity"].present
    _CONSOLE["stream"] = os.fdopen(os.dup(2), "w", buffering=1)
    handler = absl_logging.get_absl_handler()
    handler.python_handler.stream = _CONSOLE["stream"]
    if not _CONSOLE["verbose"]:
        handler.addFilter(_ConsoleFilter())
        handler.setFormatter(_ConsoleFormatter())
    logging.captureWarnings(True)
    tf_logger = logging.getLogger("tensorflow")
    for extra in list(tf_logger.handlers):
        tf_logger.removeHandler(extra)
    tf_logger.propagate = True


def log_to_file(path, root=None):
    """Also writes the full log (every record, TF's C++ runtime too) to ``path``; returns it.

    Without ``-v`` the process's file descriptor 2 is pointed at the file, so
    what TensorFlow's C++ runtime prints lands there, not on the console.
    With ``root`` (the run folder the log lives in) no symbolic link below it is
    followed: a planted one raises ``bwtf.LinkRefusedError`` (an OSError).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    handle = bwtf.open_below(root, path, flags) if root else os.open(path, flags, 0o666)
    file_handler = logging.StreamHandler(os.fdopen(handle, "a", encoding="utf-8"))
    file_handler.setFormatter(absl_logging.PythonFormatter())
    file_handler.setLevel(logging.DEBUG if _CONSOLE["verbose"] else logging.INFO)
    logging.getLogger().addHandler(file_handler)
    if not _CONSOLE["verbose"] and _CONSOLE["stream"] is not None:
        sys.stderr.flush()
        os.dup2(file_handler.stream.fileno(), 2)
    return path


def call(main, spec, args):
    """Runs ``main(args)`` and exits: with its code, or one line and the error's code for a UserError."""
    try:
        _check_args(spec, args)
        code = main(args)
    except bwtf.UserError as error:
        fail(spec, str(error), error.exit_code)
    except app.UsageError as error:
        fail(spec, str(error))
    sys.exit(bwtf.EXIT_OK if code is None else code)


def run_with_groups(body, spec, flag_groups, argv=None):
    """For programs whose flags are ``{group: FlagGroup}``: ``body(values)`` with ``{group: {flag: value}}``.

    ``argv`` given (flags already parsed, as in tests): only the error mapping; else the whole shell.
    """
    def main(args):
        del args  # every setting is a flag
        return body({group: holders.values() for group, holders in flag_groups.items()})

    if argv is None:
        run(main, spec)
    else:
        call(main, spec, list(argv[1:]))


def log_to_file_in(model_dir, name):
    """Sends the full log to ``$BWTF_LOG_DIR/<name>.log``, else ``<model_dir>/logs/<name>.log``.

    Nothing when neither is a local folder (an object store, no model_dir), or
    when the folder cannot be written or crosses a symbolic link below
    model_dir: the console still shows bwtf's lines.
    """
    folder, root = os.environ.get("BWTF_LOG_DIR"), None
    if not folder and model_dir and "://" not in model_dir:
        folder, root = os.path.join(model_dir, "logs"), model_dir
    if not folder:
        return None
    try:
        return log_to_file(os.path.join(folder, f"{name}.log"), root)
    except OSError as error:
        absl_logging.warning("cannot write the log file in %s (%s); the console shows bwtf's lines only",
                             folder, error)
        return None


def _call_main(main, spec, argv):
    _setup_logging()
    try:
        call(main, spec, list(argv[1:]))
    except Exception:  # A bug: its traceback reaches the console and the log file.
        absl_logging.error("%s failed with a bug:\n%s", spec.name, traceback.format_exc())
        sys.exit(bwtf.EXIT_FAILED)


def run(main: Callable[[Sequence[str]], Optional[int]], spec: Program):
    """Parses flags, sets up logging, runs ``main(args)`` and exits with its code."""
    sys.argv[0] = spec.name
    app.run(lambda argv: _call_main(main, spec, argv), flags_parser=_flags_parser(spec))

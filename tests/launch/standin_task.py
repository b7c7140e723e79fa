"""A stand-in for bwtf-train, for testing the launcher's process handling quickly.

Run as ``python -m standin_task --steps=N --step_secs=S [--fail_with=C]`` with
TF_CONFIG set by the launcher. The ps runs the real
``_ps_lifecycle.serve_parameter_server`` and workers its ``start_worker_watchdog``; the chief listens on its port, "trains"
for N steps, exits 75 after a SIGTERM (as bwtf-train does after its final save)
and always signals the ps tasks; workers and the evaluator just count steps.
Every task prints ``<name> step <k>`` lines so tests can see the prefixes.
"""
import argparse
import json
import os
import signal
import socket
import sys
import time

from absl import logging

from bwtf.estimator.cluster import ps_lifecycle as _ps_lifecycle
from bwtf.estimator.cluster import roles as cluster


def _train_like(name, steps, step_secs, fail_with):
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    for step in range(1, steps + 1):
        if stop:
            print(f"{name} stopping at step {step - 1} after SIGTERM", flush=True)
            return 75
        print(f"{name} step {step}", flush=True)
        time.sleep(step_secs)
    return fail_with


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--step_secs", type=float, default=0.2)
    parser.add_argument("--fail_with", type=int, default=0)
    parser.add_argument("--distribution", default="ps")
    parser.add_argument("--flagfile")
    args = parser.parse_args()
    if args.flagfile:
        with open(args.flagfile, encoding="utf-8") as lines:
            args = parser.parse_args(sys.argv[1:] + [line.strip() for line in lines if line.strip()])
    logging.set_verbosity(logging.INFO)
    role = cluster.resolve()
    name = f"{role.task_type}:{role.task_id}"
    print(f"{name} pid {os.getpid()} tf_config {json.dumps(os.environ.get('TF_CONFIG', ''))}", flush=True)
    if role.task_type == "ps":
        return _ps_lifecycle.serve_parameter_server(role, chief_timeout_secs=3, poll_secs=0.5)
    if role.task_type == "worker":
        _ps_lifecycle.start_worker_watchdog(role, chief_timeout_secs=3, poll_secs=0.5)
    if role.task_type != "chief" or not role.cluster_spec:
        return _train_like(name, args.steps, args.step_secs, 0)
    listener = socket.create_server(("", int(role.address.rsplit(":", 1)[1])))
    try:
        status = _train_like(name, args.steps, args.step_secs, args.fail_with)
    finally:
        _ps_lifecycle.notify_chief_done(role, 0, timeout_secs=10)
        listener.close()
    return status


if __name__ == "__main__":
    sys.exit(main())

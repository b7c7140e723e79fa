"""bwtf.estimator.cluster: where a task's role comes from, and the life of the processes of a job.

  roles             the cluster spec and this process's role, from flags, TF_CONFIG, Slurm, PBS/MPI
                    variables, or local (``resolve``)
  ps_lifecycle      parameter servers that exit once the chief is done, or with 70 once it vanished;
                    the workers' watchdog
  worker_stop       workers that stop with the chief on SIGTERM/SIGUSR1
  local_supervisor  the processes of a localhost cluster (``bwtf-launch``): ports, prefixes, shutdown
  batch_task        the per-task wrapper srun/mpiexec start (``python -m bwtf.estimator.task``)
  flags_digest      one digest of a task's command line, so tasks prove they agree
  tf_config         the one TF_CONFIG builder and decoder
  ports             the one port probe: a free port here, an address that answers, waiting for peers

Importing the package imports nothing.
"""

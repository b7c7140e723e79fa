"""bwtf.estimator.training: one training task and the pieces model_fn adds to its graph.

  task           run_task: a task's role decides what it runs (ps, chief, worker, evaluator)
  schedule       the learning rate at each step (warmup, then cosine/step/constant)
  progress       the progress log line and the throughput scalars
  step_limit     no update past --train_steps, however many workers race
  sync_replicas  closing the chief's session at once under SyncReplicasOptimizer

Importing the package imports nothing.
"""

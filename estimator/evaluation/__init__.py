"""bwtf.estimator.evaluation: evaluating checkpoints, shared by training, the evaluator task and bwtf-eval.

  runner          EvalJob, evaluate_once, evaluate_continuously
  loop            the continuous evaluator's stop rules (free of TensorFlow)
  history         the evaluator's history file, so a restart repeats nothing
  checkpoints     which checkpoint(s) to read: ``latest``, ``ckpt-<N>`` or a TF prefix
  single_process  one checkpoint through Estimator.evaluate on this process alone
  model_setup     flag values into the configs that rebuild a trained model (eval, export, train)
  events          scalars read back from event files
  plots           the PNG plots of a run (``bwtf-report``)

Importing the package imports nothing.
"""

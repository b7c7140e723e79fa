"""bwtf.estimator.runner: bwtf's own engine for the Estimator programming model, without tf.estimator.

  spec       ModeKeys, EstimatorSpec, PredictOutput, ServingInputReceiver, WarmStartSettings:
             tf.estimator's types when it is installed, bwtf's otherwise
  selection  use_bwtf_runner(): BWTF_RUNNER=bwtf|estimator, else the runner exactly when
             tf.estimator is missing (TensorFlow 2.16+)
  engine     RunConfig, Runner (train / evaluate / export_saved_model on
             MonitoredTrainingSession), train_distributed (a chief or worker of a ps or
             collective cluster)
  _replicated  the TRAIN spec under MultiWorkerMirroredStrategy (per-replica model_fn, merged spec)
  _export    the SavedModel Builder behind Runner.export_saved_model

This package imports nothing at import time: model_fn imports ``spec`` from it.
"""

"""bwtf.estimator: the tf.estimator training program and its parts.

Public modules: ``config`` (the frozen dataclasses passed to model_fn and the
input functions), ``models`` (resnet50 v1.5, inception_v3, alexnet,
small_cnn), ``model_fn``, ``inputs``, ``cluster`` (this process's role),
``runner`` (bwtf's own engine for the model_fn where tf.estimator is missing,
or selected with BWTF_RUNNER=bwtf), and
the programs ``train``, ``evaluate``, ``export`` and ``launch``. Importing the
package itself imports nothing (not even TensorFlow); each module imports what
it needs.
"""

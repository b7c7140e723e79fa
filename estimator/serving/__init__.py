"""bwtf.estimator.serving: a SavedModel that answers encoded JPEGs (what ``bwtf-export`` writes).

  saved_model  export_saved_model: restore, build the serving graph, write atomically
  signature    the serving graph: JPEG bytes in, classes and top-5 labels out
  labels       the label text of each class, for the signature

Importing the package imports nothing.
"""

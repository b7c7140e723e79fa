"""The serving graph: a batch of encoded JPEG strings in, classes and top-5 labels out.

Input ``jpeg_bytes``: string [N], one encoded JPEG per example.
Outputs (all [N] or [N, ...], row i answers request i):

  valid               bool     False when row i could not be decoded
  error               string   "" or why row i was rejected
  classes             int64    argmax class, -1 for an invalid row
  probabilities       float32  [N, C] softmax, zeros for an invalid row
  top_5_classes       int32    [N, K] (K = min(5, C)), -1 for an invalid row
  top_5_probabilities float32  [N, K]
  top_5_synsets       string   [N, K] class names (e.g. "n01440764"), "" when invalid
  top_5_labels        string   [N, K] label text (e.g. "tench, Tinca tinca")

A request with bad bytes is answered, not crashed: the bytes that do not start
with the JPEG marker (FF D8 FF), and the ones whose decoding fails (corrupt or
truncated data), are dropped inside the graph by a tf.data pipeline with
``ignore_errors``; their rows come back with ``valid`` False and an ``error``
text, and the other rows of the same request are unaffected.

Deliberately left out: PNG/GIF input and resizing policy (``preprocess_jpeg``,
from ``bwtf.estimator.inputs``, is the eval preprocessing the model was
evaluated with).
"""
import tensorflow as tf

INPUT_KEY = "jpeg_bytes"
NOT_JPEG = "not a JPEG image: the bytes do not start with the JPEG marker FF D8 FF"
UNDECODABLE = "corrupt or truncated JPEG: decoding failed"
_JPEG_MARKER = b"\xff\xd8\xff"


def _starts_like_jpeg(jpegs):
    return tf.equal(tf.strings.substr(jpegs, 0, len(_JPEG_MARKER)), _JPEG_MARKER)


def _decoded_rows(jpegs, preprocess_jpeg, image_size):
    """(row indices that decoded, their images), dropping rows that fail.

    A sentinel row -1 (a valid black JPEG) keeps the dataset non-empty, so an
    all-invalid or empty request still yields one batch.
    """
    sentinel = tf.io.encode_jpeg(tf.zeros([image_size, image_size, 3], tf.uint8))
    indices = tf.concat([[-1], tf.range(tf.size(jpegs))], axis=0)
    contents = tf.concat([[sentinel], jpegs], axis=0)
    plausible = tf.concat([[True], _starts_like_jpeg(jpegs)], axis=0)
    dataset = tf.data.Dataset.from_tensor_slices((indices, contents, plausible))
    dataset = dataset.filter(lambda index, content, ok: ok)
    dataset = dataset.map(lambda index, content, ok: (index, preprocess_jpeg(content)))
    dataset = dataset.ignore_errors().batch(2**31 - 1)
    rows, images = dataset.get_single_element()
    return rows[1:], images[1:]


def _scatter(rows, values, batch, fill):
    """A [batch, ...] tensor with ``values`` at ``rows`` and ``fill`` elsewhere."""
    shape = tf.concat([[batch], tf.shape(values)[1:]], axis=0)
    base = tf.fill(shape, tf.constant(fill, values.dtype))
    return tf.tensor_scatter_nd_update(base, tf.expand_dims(rows, 1), values)


def _labels_lookup(names, fallback_count):
    names = list(names) or [str(index) for index in range(fallback_count)]
    return tf.constant(names + [""], dtype=tf.string)


def serving_outputs(jpegs, logits_fn, preprocess_jpeg, image_size, class_names, label_texts):
    """The output dict for ``jpegs`` [N] (see the module docstring).

    ``logits_fn(images) -> [M, C] logits`` builds the model on the decoded rows.
    """
    batch = tf.size(jpegs)
    rows, images = _decoded_rows(jpegs, preprocess_jpeg, image_size)
    logits = logits_fn(images)
    num_classes = int(logits.shape[-1])
    k = min(5, num_classes)
    probabilities = tf.nn.softmax(logits)
    top = tf.nn.top_k(probabilities, k=k)
    valid = _scatter(rows, tf.ones_like(rows, tf.bool), batch, False)
    top_classes = _scatter(rows, top.indices, batch, -1)
    synsets = _labels_lookup(class_names, num_classes)
    texts = _labels_lookup(label_texts or class_names, num_classes)
    plausible = _starts_like_jpeg(jpegs)
    # Invalid rows point one past the last class, at the trailing "" entry.
    label_index = tf.where(top_classes < 0, num_classes, top_classes)
    outputs = {
        "valid": valid,
        "error": tf.where(valid, "", tf.where(plausible, UNDECODABLE, NOT_JPEG)),
        "classes": _scatter(rows, tf.argmax(logits, axis=1), batch, -1),
        "probabilities": _scatter(rows, probabilities, batch, 0.0),
        "top_5_classes": top_classes,
        "top_5_probabilities": _scatter(rows, top.values, batch, 0.0),
        "top_5_synsets": tf.gather(synsets, label_index),
        "top_5_labels": tf.gather(texts, label_index),
    }
    # Named after their keys, so the graph reads like the signature.
    return {key: tf.identity(value, name=key) for key, value in outputs.items()}

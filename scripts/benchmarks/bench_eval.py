"""Benchmark: what the export's per-row error isolation costs a serving request.

    .venv/bin/python scripts/benchmarks/bench_eval.py [--model=small_cnn] [--image_size=64] \
        [--batch=32] [--batches=20] [--repeats=3]

The export's serving signature decodes a request's JPEGs inside a tf.data
pipeline with ``ignore_errors``, so bad bytes cost their own row and not the
whole request (``bwtf.estimator.serving.signature``). The baseline is the
usual serving graph: ``tf.map_fn`` over the same preprocessing
(``inputs.eval_image_from_bytes``), where one bad JPEG fails the request.
Both graphs hold the same freshly initialised model and are fed the same
batches of real ImageNet JPEGs (``<repo>/../shared/data/imagenet-samples``),
alternating, in one process. It prints images/s of each (median over
--repeats) and the ratio; target: ratio >= 0.9 (isolation costs <= 10%).
"""
import argparse
import pathlib
import statistics
import time

import tensorflow as tf

from bwtf.estimator import config, inputs, model_fn, models
from bwtf.estimator.serving import signature as _export_signature

_SAMPLES = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "imagenet-samples"


def _graph(kind, model_config):
    """(graph, jpeg placeholder, classes tensor) for 'isolated' or 'baseline'."""
    size = model_config.image_size
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(1)
        jpegs = tf.compat.v1.placeholder(tf.string, [None])
        logits_fn = lambda images: model_fn.build_logits(images, model_config, training=False)  # noqa: E731
        crop = models.eval_crop(model_config.name)
        preprocess = lambda encoded: inputs.eval_image_from_bytes(encoded, size, crop)  # noqa: E731
        if kind == "isolated":
            classes = _export_signature.serving_outputs(
                jpegs, logits_fn, preprocess, size, (), ())["classes"]
        else:
            images = tf.map_fn(preprocess, jpegs, fn_output_signature=tf.TensorSpec([size, size, 3]))
            classes = tf.argmax(logits_fn(images), axis=1)
        init = tf.compat.v1.global_variables_initializer()
    session = tf.compat.v1.Session(graph=graph)
    session.run(init)
    return session, jpegs, classes


def _images_per_sec(runner, batches):
    session, jpegs, classes = runner
    session.run(classes, {jpegs: batches[0]})  # warm-up
    start = time.perf_counter()
    for batch in batches:
        session.run(classes, {jpegs: batch})
    return sum(len(batch) for batch in batches) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    files = sorted(_SAMPLES.glob("*.JPEG"))
    if not files:
        raise SystemExit(f"no sample JPEGs in {_SAMPLES}; this benchmark needs the shared samples")
    data = [path.read_bytes() for path in files]
    batches = [[data[(b * args.batch + i) % len(data)] for i in range(args.batch)]
               for b in range(args.batches)]
    model_config = config.ModelConfig(args.model, 1000, args.image_size)
    runners = {kind: _graph(kind, model_config) for kind in ("baseline", "isolated")}
    figures = {kind: [] for kind in runners}
    for _ in range(args.repeats):
        for kind, runner in runners.items():
            figures[kind].append(_images_per_sec(runner, batches))
    baseline = statistics.median(figures["baseline"])
    isolated = statistics.median(figures["isolated"])
    print(f"model {args.model} at {args.image_size}px, {args.batches} batches of {args.batch} real JPEGs, "
          f"median of {args.repeats}")
    print(f"baseline (tf.map_fn decode, one bad JPEG fails the request): {baseline:8.1f} images/s")
    print(f"export   (tf.data + ignore_errors, per-row errors):          {isolated:8.1f} images/s")
    print(f"ratio export/baseline: {isolated / baseline:.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()

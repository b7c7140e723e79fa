"""Packaging for bwtf.

The repository root *is* the package ``bwtf`` (``package_dir={"bwtf": "."}``),
so the sub-packages are listed explicitly: a ``find_packages()`` at the root
would also pick up ``tests`` or a ``.venv`` and install them as top-level
packages, which is exactly what other projects must never see.
"""
import setuptools
from setuptools.command.build_py import build_py


class _BuildPyWithoutSetup(build_py):
    """Keeps setup.py itself out of the wheel.

    The root package's folder is the repository root, so build_py would
    otherwise ship ``bwtf/setup.py`` as an importable module.
    """

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "bwtf" and m[1] == "setup")]


# Only these folders are code; tests/, scripts/ and any .venv are not packages.
_SUBPACKAGES = setuptools.find_packages(
    where=".", include=["estimator", "estimator.*", "data", "data.*", "ckpt", "ckpt.*"]
)

# The base requirements hold for both supported TensorFlow versions; each
# TensorFlow extra pins its own stack, checked with a clean install and `pip check`:
#
# 2.15.1 (extras cpu, gpu): the last release that ships tf.estimator. The TFDS and
# tensorflow-metadata pins are the newest pair that import together with
# protobuf 4.x on Python 3.11: an unpinned tensorflow-metadata pulls a release
# that needs protobuf 5, which TF 2.15 refuses, and `import tensorflow_datasets`
# then fails. numpy 2 is not supported by TF 2.15.
#
# 2.21.0 (extras cpu-tf221, gpu-tf221): no tf.estimator and no Keras 2; bwtf's
# own runner stands in. It needs protobuf >= 6.31.1 (TF 2.21) and takes numpy 2;
# TFDS 4.9.10 with tensorflow-metadata 1.21.0 import with them. tensorflow-estimator
# must NOT be installed beside it (`import bwtf` refuses the mix). The `beam` extra
# (apache-beam 2.60 needs protobuf < 4.26 and numpy < 1.27) cannot be installed
# beside this stack: build datasets across nodes from a 2.15 environment.
_TF_VERSION = "2.15.1"
_TF_STACK = [
    "tensorflow-estimator~=2.15.0",
    "tensorflow-datasets==4.9.4",
    "tensorflow-metadata==1.15.0",
    "protobuf>=3.20.3,<5",
    "numpy>=1.23.5,<2",
]
_TF221_VERSION = "2.21.0"
_TF221_STACK = [
    "tensorflow-datasets==4.9.10",
    "tensorflow-metadata==1.21.0",
    "protobuf>=6.31.1,<8",
    "numpy>=1.26,<3",
    # TFDS 4.9.10 imports it to find a builder's code (download_and_prepare) but
    # does not require it: without it bwtf-build-data fails on a clean install.
    "importlib_resources>=6.1,<8",
]
_REQUIRED = [
    "absl-py>=1.4,<3",
    "fsspec>=2023.12.0",
    "gcsfs>=2023.12.0",
    "defusedxml>=0.7.1,<1",
    # The ILSVRC2012 devkit's meta.mat (validation labels, synset words) is a MATLAB file.
    "scipy>=1.10,<2",
    # Hardware CRC32C for checkpoint manifests (bwtf.ckpt falls back to zlib's CRC32).
    "google-crc32c>=1.5.0",
    # `tensorboard --logdir MODEL_DIR`: TensorBoard 2.15 imports pkg_resources, which
    # setuptools 82 removed.
    "setuptools>=68,<82",
]
_EXTRAS = {
    "cpu": [f"tensorflow-cpu=={_TF_VERSION}"] + _TF_STACK,
    "gpu": [f"tensorflow[and-cuda]=={_TF_VERSION}"] + _TF_STACK,
    "cpu-tf221": [f"tensorflow-cpu=={_TF221_VERSION}"] + _TF221_STACK,
    "gpu-tf221": [f"tensorflow[and-cuda]=={_TF221_VERSION}"] + _TF221_STACK,
    "beam": ["apache-beam==2.60.0"],
    "demo": ["scikit-learn>=1.3,<2"],
    "report": ["matplotlib>=3.7,<4"],
    "test": [
        "pytest>=7.4",
        "pytest-timeout>=2.2",
        "scikit-learn>=1.3,<2",
        "gcp-storage-emulator>=2024.8.3",
        "matplotlib>=3.7,<4",
        # The tests read event files with TensorBoard's own reader (TensorFlow 2.21
        # no longer installs it) and TFDS's builder test case imports dill.
        "tensorboard>=2.15,<3",
        "dill>=0.3.1",
    ],
}

_CONSOLE_SCRIPTS = [
    "bwtf-train=bwtf.estimator.train:run",
    "bwtf-eval=bwtf.estimator.evaluate:run",
    "bwtf-export=bwtf.estimator.export:run",
    "bwtf-launch=bwtf.estimator.launch:run",
    "bwtf-build-data=bwtf.data.build:run",
    "bwtf-ckpt=bwtf.ckpt.cli:run",
    "bwtf-report=bwtf.estimator.report:run",
]

setuptools.setup(
    name="bwtf",
    version="0.1.0",
    description=(
        "Distributed Estimator-style training of ImageNet models on HPC clusters (TensorFlow 2.15 or 2.21), "
        "with checkpoints gathered on the chief and committed atomically."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9,<3.14",  # 2.15: 3.9-3.11 (extras cpu, gpu); 2.21: 3.10-3.13
    package_dir={"bwtf": "."},
    packages=["bwtf"] + [f"bwtf.{name}" for name in _SUBPACKAGES],
    include_package_data=False,
    package_data={"bwtf": ["scripts/*"], "bwtf.data": ["**/*.txt", "**/dummy_data/**/*"]},
    install_requires=_REQUIRED,
    extras_require=_EXTRAS,
    entry_points={"console_scripts": _CONSOLE_SCRIPTS},
    cmdclass={"build_py": _BuildPyWithoutSetup},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

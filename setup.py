"""Installs `mmv_core` and `pipelines`; Dataflow workers install it via --setup_file."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements():
  lines = (_HERE / "requirements.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setuptools.setup(
    name="mmv-pipeline",
    version="0.1.0",
    description="MMV video networks: Beam pipelines for feature extraction and UCF101 linear evaluation.",
    long_description=(_HERE / "README.md").read_text() if (_HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(
        include=["mmv_core", "mmv_core.*", "pipelines", "pipelines.*"]
    ),
    # The released checkpoints' trees, which checkpoints are validated against.
    package_data={"mmv_core.checkpoints": ["manifests/*.json", "manifests/README.md"]},
    install_requires=_requirements(),
    # TensorFlow is the reference the tests check the decoder and the resize
    # against, and the original's baseline in bench/; the jobs never import it.
    extras_require={
        "test": [
            "pytest==9.2.0",
            "pytest-xdist==3.8.0",
            "gcp-storage-emulator==2026.7.19",
            "cryptography==50.0.2",
            "tensorflow-cpu==2.21.0",
            "ruff==0.17.6",
            "pyink==26.5.1",
        ]
    },
)

# Worker image for Dataflow (custom SDK container). Build one per accelerator:
#   docker build --build-arg JAX_EXTRA=cuda12 -t REGION-docker.pkg.dev/PROJECT/mmv/worker:gpu .
#   docker build --build-arg JAX_EXTRA=tpu    -t REGION-docker.pkg.dev/PROJECT/mmv/worker:tpu .
#   docker build --build-arg JAX_EXTRA=cpu    -t REGION-docker.pkg.dev/PROJECT/mmv/worker:cpu .
# Beam and Python versions must equal the launching environment's (requirements.txt).
FROM apache/beam_python3.11_sdk:2.77.0

ARG JAX_EXTRA=cuda12

# Dependencies go into the image's own Python: with this variable set the
# workers use it instead of building a virtual environment at start-up.
ENV RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1 \
    XLA_PYTHON_CLIENT_PREALLOCATE=false

COPY requirements.txt constraints.txt /opt/mmv/
# CUDA and TPU runtimes come as pip wheels with the jax extra; the GPU driver is
# installed by Dataflow (install-nvidia-driver). ffmpeg is the imageio-ffmpeg
# binary, the same build as local runs, so the JPEG bytes of the cache match.
RUN pip install --no-cache-dir -c /opt/mmv/constraints.txt -r /opt/mmv/requirements.txt \
    && if [ "$JAX_EXTRA" != "cpu" ]; then pip install --no-cache-dir "jax[${JAX_EXTRA}]==0.10.2"; fi \
    && python -c "import imageio_ffmpeg, subprocess; subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-version'], check=True)"

COPY setup.py README.md MANIFEST.in /opt/mmv/src/
COPY mmv_core /opt/mmv/src/mmv_core
COPY pipelines /opt/mmv/src/pipelines
RUN pip install --no-cache-dir --no-deps /opt/mmv/src

ENTRYPOINT ["/opt/apache/beam/boot"]

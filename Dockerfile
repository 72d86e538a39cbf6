# scstrata service on an NVIDIA GPU host.
#   docker build -t scstrata .
#   docker run --gpus all -p 3000:3000 -v /srv/models:/models:ro scstrata
# /models/models.yaml names the checkpoints (README: "Deploying on a GPU host").
#
# One CUDA, not two: torch's CUDA 13 wheels bring the CUDA runtime, cuBLAS, cuDNN and NCCL as
# nvidia-* wheels, and onnxruntime-gpu 1.31 is built for the same CUDA 13 and uses them once
# torch has loaded them; an nvidia/cuda base image would add a second copy (~3 GB) that
# nothing loads. The host needs only the NVIDIA driver (>= R580 for CUDA 13) and the NVIDIA
# Container Toolkit, which mounts the driver's libcuda into the container.
FROM ubuntu:24.04

ENV DEBIAN_FRONTEND=noninteractive \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    BENTOML_DO_NOT_TRACK=true \
    BENTOML_HOME=/home/scstrata/bentoml \
    PATH=/opt/venv/bin:$PATH

# Distribution python; curl for the health check; a C compiler and Python's headers because
# Triton builds its kernel launchers when torch.compile runs (on by default on CUDA; without
# them the service logs a warning and runs eager blocks, ~4% slower on an H200).
# Versions float with the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
       curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# The CUDA build of the same torch release the Makefile pins for CPU (TORCH in Makefile),
# ONNX Runtime's GPU package (never beside plain onnxruntime: serving-notes.md) and onnx,
# which the scFoundation ONNX runtime needs to export its per-depth graphs.
RUN pip install --index-url https://download.pytorch.org/whl/cu130 torch==2.13.0 \
    && pip install onnxruntime-gpu==1.31.* "onnx>=1.16"

WORKDIR /src
COPY clients/ clients/
COPY service/ service/
# the same two packages `make install` installs (scoring stays on the analyst's side)
RUN pip install ./clients ./service \
    && useradd --create-home --uid 10001 scstrata
USER 10001
VOLUME ["/models"]
EXPOSE 3000

# A model that cannot load stops the container at once (exit 1), so the start period only
# has to cover a good load: compiling the blocks takes 7-10 s on an H200 (bench/RESULTS.md),
# reading a 3B checkpoint from a local disk an estimated minute more; 180 s leaves room.
# /readyz is polled every 5 s meanwhile, so a ready container is seen as healthy early.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --start-interval=5s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:3000/readyz"]

ENTRYPOINT ["scstrata", "serve", "--host", "0.0.0.0", "--port", "3000"]
CMD ["--config", "/models/models.yaml"]

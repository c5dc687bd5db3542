# The CrashChat Platform image for Ray nodes (head, CPU-decode and GPU workers) and KubeRay.
#   docker build -t ghcr.io/your-org/crashchat-platform:latest .
# CUDA base for GPU nodes (torch's wheels bring their own CUDA libraries; the base gives the
# matching user-space stack and NCCL-friendly defaults). The same image runs on CPU nodes.
# Install with `--build-arg EXTRAS=dev,gpu` to add flash-attention where it builds.
ARG BASE_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ARG EXTRAS=""
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    RAY_AUTH_MODE=token \
    TORCH_EXTENSIONS_DIR=/opt/torch_extensions

# Python 3.11 (the version the lock file is resolved for), ffmpeg libraries for PyAV/decord,
# a compiler for DeepSpeed's JIT ops.
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
      build-essential ninja-build ffmpeg libgl1 curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# Dependencies first (cached layer), then the project.
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY platform/ platform/
RUN pip install --no-cache-dir -c requirements/lock.txt -e ".${EXTRAS:+[$EXTRAS]}"
COPY jobs/ jobs/
COPY serve/ serve/
COPY cluster/ cluster/

# Runs as the unprivileged user Ray's images use.
RUN useradd -m -u 1000 ray && chown -R ray /app && mkdir -p /opt/torch_extensions && chown ray /opt/torch_extensions
USER ray
CMD ["bash"]

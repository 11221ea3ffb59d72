# selfish-serve in a container: CPU PyTorch, the compiled kernels, no training-only packages, non-root.
#   docker build -t selfish-deploy .
#   docker run -p 8000:8000 selfish-deploy                                    # the bundled model
#   docker run -p 8000:8000 -v $PWD/export:/model:ro selfish-deploy --model /model
#   docker run -p 8000:8000 -e HF_TOKEN selfish-deploy --model NS/NAME@REV     # from the Hub (cached in the image's HF_HOME)
#   docker run -p 8000:8000 -e SELFISH_API_KEY=secret selfish-deploy           # every SELFISH_* setting works
# scripts/docker_replay.sh replays the RUN and ENTRYPOINT lines below in a fresh virtual environment (no Docker
# engine needed) and checks the server answers; keep the two in step.

# ---- build: compile the kernels into a wheel ------------------------------------------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md constraints.txt ./
COPY selfish_deploy selfish_deploy
COPY training training
COPY serving serving
# The kernels need no torch headers (plain C++/OpenMP through ctypes), so the wheel builds without torch.
RUN pip wheel --no-deps -w /wheels .

# ---- run ------------------------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HF_HOME=/home/selfish/.cache/huggingface SELFISH_HOST=0.0.0.0 SELFISH_PORT=8000
# libgomp1: the kernels' OpenMP runtime (PyTorch brings its own copy, the kernels link the system one).
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
# CPU-only PyTorch from PyTorch's CPU index (the default index would bring CUDA packages).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY --from=build /wheels /wheels
COPY constraints.txt /tmp/constraints.txt
# No extras: the training-only packages (plots, graphs, parquet) are the `train` extra, not installed here.
RUN pip install -c /tmp/constraints.txt /wheels/*.whl && rm -rf /wheels \
    && python -m selfish_deploy.kernels | grep "^compiled_cpu *True"
RUN useradd --create-home --uid 10001 selfish
USER selfish
WORKDIR /home/selfish
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"SELFISH_PORT\", \"8000\")}/health', timeout=4)"
ENTRYPOINT ["selfish-serve"]

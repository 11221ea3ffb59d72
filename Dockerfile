# Serve an export directory (default: the bundled sparse PTB model) on port 8000.
#   docker build -t selfish-deploy .
#   docker run -p 8000:8000 selfish-deploy                      # bundled model
#   docker run -p 8000:8000 -v $PWD/export:/model selfish-deploy --model /model
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
# CPU-only PyTorch from PyTorch's CPU index (the default index would bring CUDA packages).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md constraints.txt ./
COPY selfish_deploy selfish_deploy
COPY training training
COPY serving serving
RUN pip install -c constraints.txt .

EXPOSE 8000
ENTRYPOINT ["selfish-serve", "--host", "0.0.0.0", "--port", "8000"]

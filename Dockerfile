# torchwire: a CPU-only image that serves the model repository mounted at /models on port 8001,
# with Prometheus metrics on 8002 (README "Docker"). The tag is the one deploy/ uses:
#   docker build -t torchwire:0.1.0 .
#   docker run -p 8001:8001 -p 8002:8002 -v "$PWD/models:/models:ro" torchwire:0.1.0

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# pip reads these when given: a package mirror (PIP_INDEX_URL), or a build with no registry at all
# from a folder of wheels (PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; README "Docker").
ARG PIP_INDEX_URL PIP_NO_INDEX PIP_FIND_LINKS
# The CPU build of torch, from PyTorch's CPU index if it answers, else from pip's index (the default
# one would bring several GB of CUDA libraries): the same script as `make setup`.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/torchwire
ENV PATH=/opt/torchwire/bin:$PATH
COPY scripts/install_torch.py /tmp/install_torch.py
RUN python /tmp/install_torch.py
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY client ./client
COPY server ./server
COPY bench ./bench
COPY models ./models
RUN pip install "./[server]"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/torchwire/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TORCHWIRE_MODEL_REPOSITORY=/models \
    TORCHWIRE_HOST=0.0.0.0 \
    TORCHWIRE_PORT=8001
COPY --from=build /opt/torchwire /opt/torchwire
COPY --from=build /src/models /models
RUN useradd --system --uid 10001 --no-create-home torchwire
USER 10001
EXPOSE 8001 8002
# Exec form: torchwire is PID 1 and receives SIGTERM itself, for a graceful stop.
ENTRYPOINT ["torchwire", "serve"]

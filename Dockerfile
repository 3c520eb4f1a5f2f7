# torchwire: a CPU-only image that serves the model repository mounted at /models on port 8001.
#   docker build -t torchwire .
#   docker run -p 8001:8001 -v "$PWD/models:/models:ro" torchwire

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# pip reads these when given: a package mirror (PIP_INDEX_URL), or a build with no registry at all
# from a folder of wheels (PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; README "Container image").
ARG PIP_INDEX_URL PIP_NO_INDEX PIP_FIND_LINKS
# The CPU build of torch: the default index would bring several GB of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/torchwire
ENV PATH=/opt/torchwire/bin:$PATH
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY client ./client
COPY server ./server
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
EXPOSE 8000 8001 8002
# Exec form: torchwire is PID 1 and receives SIGTERM itself, for a graceful stop.
ENTRYPOINT ["torchwire", "serve"]

# syntax=docker/dockerfile:1
#
# One image for every process of the fleet:
#   docker run IMAGE                          -> router replica (serve, listening on 0.0.0.0:8080)
#   docker run IMAGE node --router-url ...    -> node agent beside a real runtime
#   docker run IMAGE sim-node --router-url ... -> node agent with the simulated runtime
#
# Both stages use the same base image so the virtualenv built in the first one runs
# unchanged in the second (its interpreter path and ABI match).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from: a change to tests or docs does not rebuild this layer.
COPY pyproject.toml README.md ./
COPY src ./src
# The wheel is built by the hatchling backend declared in pyproject.toml (it also carries
# the Lua scripts under llm_router/state/lua); then it and its dependencies go into a
# self-contained virtualenv that the runtime stage copies as a whole.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/llm-router \
 && /opt/llm-router/bin/pip install /wheels/llm_router-*.whl \
 && /opt/llm-router/bin/python -c "import importlib.resources as r; \
assert any(p.name.endswith('.lua') for p in r.files('llm_router.state').joinpath('lua').iterdir()), \
'wheel is missing llm_router/state/lua/*.lua'"

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/llm-router/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLM_ROUTER_HOST=0.0.0.0 \
    LLM_ROUTER_PORT=8080
# A fixed numeric uid so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 llmr \
 && useradd --system --uid 10001 --gid llmr --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin llmr
COPY --from=builder /opt/llm-router /opt/llm-router
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# Probes the process on the port given by LLM_ROUTER_PORT (set the port through that
# variable, not --port, so the check follows it). urlopen raises on any non-2xx answer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LLM_ROUTER_PORT', '8080') + '/healthz', timeout=2)"]
# SIGTERM reaches llm-router directly (exec form, PID 1): readiness turns 503 and
# in-flight requests finish before it exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["llm-router"]
CMD ["serve", "--host", "0.0.0.0"]

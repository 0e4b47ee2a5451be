# syntax=docker/dockerfile:1
# Toolgate image: the gateway as a Kubernetes sidecar (see helm/toolgate/).
#
#   docker build -t toolgate .
#   docker run --rm --read-only --tmpfs /tmp -v toolgate-state:/var/lib/toolgate \
#       -v "$PWD/deploy:/etc/toolgate:ro" -e BILLING_TOKEN=... toolgate
#
# (Outside a pod, reach it with -p 8080:8080 and TOOLGATE_LISTEN=0.0.0.0:8080; as a sidecar
# it listens on 127.0.0.1 only, where just the agent container can reach it.)
#
# The image holds no configuration: mount toolgate.yaml, the tool specs, the policies and the
# token-verification keys under /etc/toolgate (read-only). Everything the gateway writes (the
# SQLite state store, the JSON-lines audit log) goes under /var/lib/toolgate, so the root
# filesystem can be mounted read-only. Upstream credentials come from the environment (or
# files) named in toolgate.yaml, never from the image.

# bookworm: glibc 2.36; the gordon-to-regorus wheels need manylinux_2_34 (x86_64 and aarch64).
# Pin a digest (python:3.11-slim-bookworm@sha256:...) for reproducible release builds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the exact dependency set and the package ---------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/toolgate
ENV PATH=/opt/toolgate/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when requirements.lock changes.
# Every artifact is checked against its SHA-256 in the lock (the build backend too).
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
# .dockerignore admits only what the package build needs (and the shipped specs/policies).
# The package itself is built with the locked backend, and pulls in nothing else.
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip check \
    && toolgate --version

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="toolgate" \
      org.opencontainers.image.description="Sidecar tool gateway for AI agents" \
      org.opencontainers.image.licenses="Apache-2.0"
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only at run time; the venv's bytecode
# was compiled by pip in the build stage. RUST_BACKTRACE=0: regorus errors stay one line.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RUST_BACKTRACE=0 \
    PATH=/opt/toolgate/bin:$PATH \
    HOME=/var/lib/toolgate

# SECURITY: a fixed non-root uid/gid (10001), so Kubernetes runAsNonRoot can verify it and
# fsGroup can make the state volume writable. No login shell, no home outside the volume.
RUN groupadd --system --gid 10001 toolgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/toolgate --shell /usr/sbin/nologin toolgate \
    && install -d -o 10001 -g 10001 -m 0750 \
       /var/lib/toolgate /var/lib/toolgate/state /var/lib/toolgate/audit \
    && install -d -m 0755 /etc/toolgate

COPY --from=build /opt/toolgate /opt/toolgate
# The shipped example specs and default policy, for `toolgate check`/`policy test`/`demo`
# run from this directory; `serve` reads only what /etc/toolgate/toolgate.yaml names.
COPY --from=build /src/tool_specs /usr/share/toolgate/tool_specs
COPY --from=build /src/policies /usr/share/toolgate/policies

# State (toolgate.db) and audit log: mount a volume here (emptyDir or PVC in Kubernetes).
VOLUME ["/var/lib/toolgate"]
WORKDIR /usr/share/toolgate
USER 10001:10001

# 8080: agent-facing (bind 127.0.0.1 in a sidecar); 8081: admin (/healthz, /readyz).
EXPOSE 8080 8081
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz on the admin port.
ENTRYPOINT ["toolgate"]
CMD ["serve", "--config", "/etc/toolgate/toolgate.yaml"]

# The forecast worker / trainer image: `docker build -t forecast-worker .`
# Run: `docker run --rm forecast-worker worker` (the default), `... train --example`, etc.
#
# Build args (all optional):
#   PYTHON_IMAGE  the base image, default python:3.11-slim; any Debian-like image with python3
#                 (3.10+) and its venv module works, e.g. the local stand-in that
#                 deploy/images/build.sh makes on machines without an image registry.
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST  a PyPI mirror (offline builds).
# No BuildKit-only syntax and no frontend image to pull: the classic builder and BuildKit
# both build it, so do `docker compose build` (v2) and `docker-compose build` (1.29).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_HOME=/tmp/keras \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# How the container runs (declared early: metadata, and it keeps the layers after the big
# dependency layer few). The worker drains and exits on SIGTERM itself: exec form, so it
# is PID 1 and gets the signal.
EXPOSE 9108
STOPSIGNAL SIGTERM
ENTRYPOINT ["forecast"]
CMD ["worker"]
WORKDIR /app

# A fixed, unprivileged user (its home is the working directory) and a virtual environment,
# which works on the official image and on Debian's externally managed python3 (PEP 668)
# alike. Dependencies come from pyproject.toml alone, so a code change rebuilds only the
# last layers. /app/models (the trainer's artifacts) and /tmp are the only places the image
# writes: it runs with a read-only root file system given a volume on /app/models and a
# tmpfs on /tmp (docker-compose.yml does exactly that).
COPY pyproject.toml /tmp/pyproject.toml
RUN groupadd --system --gid 10001 forecast \
 && useradd --system --uid 10001 --gid forecast --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin forecast \
 && mkdir -p /app/models && chown forecast:forecast /app/models \
 && python3 -m venv /opt/venv \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt /tmp/pyproject.toml

COPY . /app
RUN pip install --no-deps /app \
 && rm -rf /app/build /app/*.egg-info \
 && forecast --help >/dev/null

USER 10001:10001

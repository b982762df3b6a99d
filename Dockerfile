# syntax=docker/dockerfile:1
# The forecast worker / trainer image: `docker build -t forecast-worker .`
# Run: `docker run --rm forecast-worker worker` (the default), `... train --example`, etc.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLBACKEND=Agg

# A fixed, unprivileged user; its home is the working directory.
RUN groupadd --system --gid 10001 forecast \
 && useradd --system --uid 10001 --gid forecast --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin forecast

WORKDIR /app
COPY . /app
# The pip cache survives rebuilds with BuildKit, so a code change does not re-download TensorFlow.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install /app \
 && rm -rf /app/build /app/*.egg-info \
 && mkdir -p /app/models /app/out \
 && chown forecast:forecast /app/models /app/out

USER forecast:forecast
EXPOSE 9108
# The worker drains and exits on SIGTERM itself (exec form: it is PID 1 and gets the signal).
STOPSIGNAL SIGTERM
ENTRYPOINT ["forecast"]
CMD ["worker"]

# A stand-in for redis:7-alpine built from Debian bookworm's redis-server (7.0).
# Like the official image: data in /data, `redis-server ARGS` as the command, redis-cli on
# PATH, runs as the unprivileged `redis` user, protected mode off (the official image builds
# it off: in a container, the network is the boundary, and the port is published on loopback).
ARG BASE_IMAGE=forecast-local/bookworm:latest
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]

# A stand-in for prom/prometheus built from Debian bookworm's prometheus (2.42).
# Like the official image: entrypoint /bin/prometheus (/bin is /usr/bin on bookworm),
# config in /etc/prometheus, data in /prometheus, runs as nobody.
ARG BASE_IMAGE=forecast-local/bookworm:latest
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus /etc/prometheus \
 && chown nobody:nogroup /prometheus
VOLUME /prometheus
WORKDIR /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

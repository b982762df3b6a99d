# A stand-in for python:3.11-slim built from Debian bookworm packages (its python3 is 3.11),
# for machines that cannot pull from an image registry. Same contract as the official image
# for our Dockerfile: python3 with venv, ca-certificates, useradd/groupadd.
ARG BASE_IMAGE=forecast-local/bookworm:latest
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/python3 /usr/local/bin/python
ENV LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]

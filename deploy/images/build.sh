#!/usr/bin/env bash
# Build local stand-ins for the official base images from Debian bookworm packages, for
# machines that cannot pull from an image registry (needs root, debootstrap and a Debian
# mirror). Prints the build args / environment that point the compose file at them:
#
#   eval "$(deploy/images/build.sh)"   # then: docker compose build && docker compose up -d
#
#   forecast-local/bookworm:latest     debootstrap --variant=minbase bookworm, `docker import`ed
#   forecast-local/python:3.11-slim    stand-in for python:3.11-slim     (PYTHON_IMAGE)
#   forecast-local/redis:7             stand-in for redis:7-alpine       (REDIS_IMAGE)
#   forecast-local/prometheus:2        stand-in for prom/prometheus      (PROMETHEUS_IMAGE)
#
# There is no stand-in for grafana/grafana (Debian has no Grafana package).
# The root file system is reused when forecast-local/bookworm exists (REBUILD_ROOTFS=1 redoes
# it); the three images are rebuilt from their Dockerfiles every time (the layer cache keeps
# that quick when nothing changed). CA certificates the host trusts in
# /usr/local/share/ca-certificates (a proxy's, say) are trusted by the images too.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
docker="${DOCKER:-docker}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
log() { echo "images: $*" >&2; }

if [[ "${REBUILD_ROOTFS:-0}" == 1 ]] || ! "$docker" image inspect forecast-local/bookworm:latest >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
    [[ $(id -u) == 0 ]] || { log "debootstrap needs root"; exit 1; }
    root="$(mktemp -d /var/tmp/forecast-rootfs.XXXXXX)"
    trap 'rm -rf "$root"' EXIT
    start=$SECONDS
    log "debootstrap --variant=minbase $suite ($mirror)"
    debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
        || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
    rm -f "$root.log"
    # As in Debian's official images: no services started by package scripts, no apt caches.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod +x "$root/usr/sbin/policy-rc.d"
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$root/etc/apt/apt.conf.d/90forecast-local"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null 2>&1
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
    chmod 755 "$root"  # mktemp made it 0700: it becomes the image's /
    tar -C "$root" -c . | "$docker" import -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - forecast-local/bookworm:latest >/dev/null
    log "forecast-local/bookworm:latest imported in $((SECONDS - start)) s"
fi

build() {  # tag dockerfile
    local start=$SECONDS
    local out
    out="$("$docker" build -t "$1" -f "$here/$2" "$here" 2>&1)" || { echo "$out" >&2; exit 1; }
    log "$1 built in $((SECONDS - start)) s"
}
build forecast-local/python:3.11-slim python.Dockerfile
build forecast-local/redis:7 redis.Dockerfile
build forecast-local/prometheus:2 prometheus.Dockerfile

echo "export PYTHON_IMAGE=forecast-local/python:3.11-slim"
echo "export REDIS_IMAGE=forecast-local/redis:7"
echo "export PROMETHEUS_IMAGE=forecast-local/prometheus:2"

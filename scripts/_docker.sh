# shellcheck shell=bash disable=SC2034  # BASE_NOTE is read by the callers
# Sourced by scripts/image-check and bench/image_size.sh: a Docker engine and the base
# image of the root Dockerfile on a machine that may have neither (root and Debian's
# packages needed).
#
#   docker_start DIR  installs docker.io and debootstrap if missing and, unless a daemon
#                     answers already, starts dockerd (its log in DIR); DOCKERD_PID is then
#                     its pid, else empty
#   docker_stop       stops the dockerd that docker_start started, if any (call it from
#                     the caller's EXIT trap)
#   docker_base DIR   makes sure python:3.11-slim is in the engine: when it is not, pulls
#                     it, and where that fails builds a stand-in for it (below), in DIR;
#                     BASE_NOTE then says what the base is
#
# The stand-in, where Docker Hub cannot be reached (this project's machines): Debian
# bookworm (its python3 is 3.11) by debootstrap from the mirror apt uses, with
# /usr/local/bin/python, imported with `docker import` and labelled duetide.stand-in=yes.
# It also trusts the machine's local CAs (/usr/local/share/ca-certificates), so that pip
# inside `docker build --network host` verifies PyPI where a TLS-intercepting egress proxy
# stands in between; nothing is added where there are none.
#
# The daemon runs without a bridge and without iptables: every container uses the host's
# network (`docker build --network host`, `docker run --network host`). DOCKER_BUILDKIT
# defaults to 0 (the classic builder: no buildx needed, --network host without
# entitlements).

export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
DOCKER_BASE=python:3.11-slim
DOCKERD_PID=""
BASE_NOTE=""

_docker_log() { echo "$(basename "$0"): $*" >&2; }

docker_start() {
    local dir="$1" driver
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
        _docker_log "installing docker.io and debootstrap"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >/dev/null
    fi
    docker info >/dev/null 2>&1 && return 0
    for driver in overlay2 vfs; do
        _docker_log "starting dockerd (storage driver $driver)"
        dockerd --storage-driver="$driver" --iptables=false --bridge=none \
            >"$dir/dockerd.log" 2>&1 &
        DOCKERD_PID=$!
        for _ in $(seq 300); do
            docker info >/dev/null 2>&1 && return 0
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
        DOCKERD_PID=""
        tail -5 "$dir/dockerd.log" >&2
    done
    _docker_log "dockerd did not start"
    return 1
}

docker_stop() {
    [ -n "$DOCKERD_PID" ] || return 0
    kill "$DOCKERD_PID" 2>/dev/null || true
    # dockerd stops its containerd and shims before it exits.
    for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    DOCKERD_PID=""
}

docker_base() {
    local dir="$1" mirror rootfs
    local stand_in="$DOCKER_BASE: a debootstrapped Debian bookworm stand-in (python3 3.11)"
    if docker image inspect "$DOCKER_BASE" --format '{{index .Config.Labels "duetide.stand-in"}}' \
        2>/dev/null | grep -q yes; then
        BASE_NOTE=$stand_in
        return 0
    fi
    if docker image inspect "$DOCKER_BASE" >/dev/null 2>&1; then
        BASE_NOTE="$DOCKER_BASE as found in the engine"
        return 0
    fi
    # Where the registry answers, the real one. Here it does not: the look-up of its host
    # fails at once.
    if timeout 600 docker pull -q "$DOCKER_BASE" >"$dir/pull.log" 2>&1; then
        BASE_NOTE="$DOCKER_BASE, pulled"
        return 0
    fi
    _docker_log "cannot pull $DOCKER_BASE: $(tail -1 "$dir/pull.log")"
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
        sed -n -E 's/^URIs: *(\S+).*/\1/p; s/^deb +(\[[^]]*\] +)?(\S+) +bookworm .*/\2/p' |
        grep -E '/debian/?$' | head -n1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    _docker_log "building the $DOCKER_BASE stand-in from $mirror (about a minute)"
    rootfs="$dir/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$dir/debootstrap.log" 2>&1 ||
        { tail -20 "$dir/debootstrap.log" >&2; return 1; }
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    # As slim as the real one: no downloaded .debs, no package lists.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'LABEL duetide.stand-in=yes' \
        --change 'CMD ["python3"]' - "$DOCKER_BASE" >/dev/null
    rm -rf "$rootfs"
    BASE_NOTE=$stand_in
}

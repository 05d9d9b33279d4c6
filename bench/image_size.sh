#!/usr/bin/env bash
# bench/image_size.sh BEFORE AFTER: build the production image (the root Dockerfile) of two
# commits and print a markdown table: image size, /opt/duetide, installed distributions,
# whether tooling (duetide_tools, the old duetide.cli, yaml, requests) imports, and whether
# the tasks function answers /healthz and /openapi.json. Written for the runtime/tooling
# split (before = 5de4446, after = 5b5896f or later), whose point is a smaller image
# without the developer tools.
#
# Needs root and Debian's packages. It installs docker.io and debootstrap if missing,
# starts dockerd if none answers (and stops it again), and, when the image
# python:3.11-slim is not there, builds a stand-in for it: Debian bookworm (its python3
# is 3.11) by debootstrap from the mirror apt uses, with /usr/local/bin/python. The
# stand-in also trusts the machine's local CAs (/usr/local/share/ca-certificates), so
# that pip inside `docker build --network host` verifies PyPI where a TLS-intercepting
# egress proxy stands in between; nothing is added where there are none.
#
# Both builds run without the layer cache, a minute or two apart, each resolving its
# dependencies from PyPI; a version that moved in between shows in the "only before/after"
# lines. Images stay tagged duetide:img-<sha> for inspection.
# PORT (default 18080) is the loopback port of the serve check; DOCKER_BUILDKIT defaults
# to 0 (the classic builder: no buildx needed, --network host without entitlements).
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 BEFORE-COMMIT AFTER-COMMIT" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root (apt-get, dockerd, debootstrap)" >&2; exit 2; }
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
BEFORE=$(git -C "$REPO" rev-parse --short "$1^{commit}")
AFTER=$(git -C "$REPO" rev-parse --short "$2^{commit}")
PORT=${PORT:-18080}
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
BASE=python:3.11-slim
if curl -s -o /dev/null "http://127.0.0.1:$PORT/"; then
    echo "$0: something already answers on port $PORT (the serve check's); set PORT" >&2
    exit 2
fi
WORK=$(mktemp -d)
DOCKERD_PID=""
CONTAINER=""
WORKTREES=()

log() { echo "image_size: $*" >&2; }

cleanup() {
    if [ -n "$CONTAINER" ]; then docker rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
    for wt in "${WORKTREES[@]}"; do git -C "$REPO" worktree remove --force "$wt" || true; done
    if [ -n "$DOCKERD_PID" ]; then
        kill "$DOCKERD_PID" 2>/dev/null || true
        # dockerd stops its containerd and shims before it exits.
        for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. Tools and a Docker engine.
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing docker.io and debootstrap"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    # No bridge and no iptables: every container here uses the host's network.
    for driver in overlay2 vfs; do
        log "starting dockerd (storage driver $driver)"
        dockerd --storage-driver="$driver" --iptables=false --bridge=none \
            >"$WORK/dockerd.log" 2>&1 &
        DOCKERD_PID=$!
        for _ in $(seq 300); do
            docker info >/dev/null 2>&1 && break
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.1
        done
        docker info >/dev/null 2>&1 && break
        kill "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
        DOCKERD_PID=""
        tail -5 "$WORK/dockerd.log" >&2
    done
    docker info >/dev/null 2>&1 || { echo "image_size: dockerd did not start" >&2; exit 1; }
fi

# 2. The base image, or a Debian bookworm stand-in for it.
BASE_NOTE="$BASE as found in the engine"
if docker image inspect "$BASE" --format '{{index .Config.Labels "duetide.stand-in"}}' \
    2>/dev/null | grep -q yes; then
    BASE_NOTE="$BASE: a debootstrapped Debian bookworm stand-in (python3 3.11)"
elif ! docker image inspect "$BASE" >/dev/null 2>&1; then
    MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
        sed -n -E 's/^URIs: *(\S+).*/\1/p; s/^deb +(\[[^]]*\] +)?(\S+) +bookworm .*/\2/p' |
        grep -E '/debian/?$' | head -n1 || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    log "building the $BASE stand-in from $MIRROR (about a minute)"
    ROOTFS="$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
    ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
        chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1
    fi
    # As slim as the real one: no downloaded .debs, no package lists.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
        "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'LABEL duetide.stand-in=yes' \
        --change 'CMD ["python3"]' - "$BASE" >/dev/null
    rm -rf "$ROOTFS"
    BASE_NOTE="$BASE: a debootstrapped Debian bookworm stand-in (python3 3.11)"
fi

# 3. Build both commits from clean worktrees.
for sha in "$BEFORE" "$AFTER"; do
    wt="$WORK/src-$sha"
    git -C "$REPO" worktree add --detach "$wt" "$sha" >/dev/null 2>&1
    WORKTREES+=("$wt")
    log "building duetide:img-$sha"
    docker build --no-cache --network host -t "duetide:img-$sha" "$wt" >"$WORK/build-$sha.log" 2>&1 ||
        { tail -30 "$WORK/build-$sha.log" >&2; exit 1; }
done

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
size() { docker image inspect "$1" --format '{{.Size}}'; }
in_image() { docker run --rm -e HOME=/tmp --entrypoint "$@" 2>/dev/null; }

# What imports, and for a tooling module that does: the installed distributions that
# require it unconditionally (a requirement under an "extra" marker is left out: pip list
# cannot tell which extras were asked for, and most of them were not).
IMPORTS_PY='
import importlib, importlib.metadata as md, re
owners = md.packages_distributions()
def requirers(dist):
    norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
    return sorted({d.metadata["Name"] for d in md.distributions() for r in (d.requires or [])
                   if norm(re.split(r"[ ;<>=!~\[(]", r)[0]) == norm(dist) and "extra" not in r})
out = []
for mod in ("duetide_tools", "duetide.cli", "yaml", "requests"):
    try:
        importlib.import_module(mod)
    except ImportError:
        out.append(f"{mod}: no")
        continue
    dist = ", ".join(owners.get(mod.split(".")[0], ["?"]))
    why = ", ".join(sorted({r for d in dist.split(", ") for r in requirers(d)}))
    out.append(f"{mod}: yes ({dist}, " + (f"required by {why})" if why else "installed itself)"))
print("; ".join(out))
'

# The installed distributions as name==version, one a line (what `pip list --format=freeze` prints).
DISTS_PY='
import importlib.metadata as md
print("\n".join(sorted({f"{d.name}=={d.version}" for d in md.distributions()})))
'

# 4. Serve: the tasks function on loopback; /healthz and /openapi.json status codes.
serve_check() {
    CONTAINER=$(docker run -d --network host -e FUNCTION_TARGET=tasks -e "PORT=$PORT" "$1")
    local health="000"
    for _ in $(seq 300); do
        health=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthz" || true)
        [ "$health" = 200 ] && break
        [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || break
        sleep 0.1
    done
    local openapi
    openapi=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/openapi.json" || true)
    docker rm -f "$CONTAINER" >/dev/null
    CONTAINER=""
    echo "healthz $health, openapi.json $openapi"
}

declare -A IMG DU NPKG IMPORTS SERVE
for sha in "$BEFORE" "$AFTER"; do
    image="duetide:img-$sha"
    IMG[$sha]=$(size "$image")
    DU[$sha]=$(in_image du "$image" -sk /opt/duetide | cut -f1)
    # importlib.metadata, not pip: an image may have dropped pip from its venv.
    in_image /opt/duetide/bin/python "$image" -c "$DISTS_PY" >"$WORK/pip-$sha.txt"
    NPKG[$sha]=$(wc -l <"$WORK/pip-$sha.txt")
    IMPORTS[$sha]=$(in_image python "$image" -c "$IMPORTS_PY")
    SERVE[$sha]=$(serve_check "$image")
done
BASE_SIZE=$(size "$BASE")
gone=$(comm -23 <(sort "$WORK/pip-$BEFORE.txt") <(sort "$WORK/pip-$AFTER.txt") | paste -sd' ')
added=$(comm -13 <(sort "$WORK/pip-$BEFORE.txt") <(sort "$WORK/pip-$AFTER.txt") | paste -sd' ')

echo "| image | size (MB) | over base (MB) | /opt/duetide (KiB) | distributions | tooling imports | serve (tasks) |"
echo "|---|---|---|---|---|---|---|"
echo "| $BASE | $(mb "$BASE_SIZE") | 0 | - | - | - | - |"
for sha in "$BEFORE" "$AFTER"; do
    echo "| duetide @ $sha | $(mb "${IMG[$sha]}") | $(mb $((IMG[$sha] - BASE_SIZE))) |" \
        "${DU[$sha]} | ${NPKG[$sha]} | ${IMPORTS[$sha]} | ${SERVE[$sha]} |"
done
echo
echo "Difference $BEFORE → $AFTER: image $(mb $((IMG[$AFTER] - IMG[$BEFORE]))) MB," \
    "/opt/duetide $((DU[$AFTER] - DU[$BEFORE])) KiB."
echo "Distributions only before: ${gone:-none}."
echo "Distributions only after: ${added:-none}."
echo "Base: $BASE_NOTE. Sizes are \`docker image inspect\` bytes / 10^6 (as \`docker image ls\`)."

# The after image must hold no tooling package and must serve.
case "${IMPORTS[$AFTER]}" in *"duetide_tools: yes"*) exit 1 ;; esac
case "${SERVE[$AFTER]}" in "healthz 200"*) ;; *) exit 1 ;; esac

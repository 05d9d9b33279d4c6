#!/usr/bin/env bash
# bench/image_size.sh BEFORE AFTER: build the production image (the root Dockerfile) of two
# commits and print a markdown table: image size, /opt/duetide, installed distributions,
# whether tooling (duetide_tools, the old duetide.cli, yaml, requests) imports, and whether
# the tasks function answers /healthz and /openapi.json. Written for the runtime/tooling
# split (before = 5de4446, after = 5b5896f or later), whose point is a smaller image
# without the developer tools.
#
# Needs root and Debian's packages: scripts/_docker.sh installs docker.io and debootstrap
# if missing, starts dockerd if none answers (and this script stops it again), and, when
# the image python:3.11-slim is not there, builds a Debian bookworm stand-in for it.
#
# Both builds run without the layer cache, a minute or two apart, each resolving its
# dependencies from PyPI (or installing them from its requirements.lock, where it has
# one); a version that moved in between shows in the "only before/after" lines. Images
# stay tagged duetide:img-<sha> for inspection.
# PORT (default 18080) is the loopback port of the serve check.
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 BEFORE-COMMIT AFTER-COMMIT" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root (apt-get, dockerd, debootstrap)" >&2; exit 2; }
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
BEFORE=$(git -C "$REPO" rev-parse --short "$1^{commit}")
AFTER=$(git -C "$REPO" rev-parse --short "$2^{commit}")
PORT=${PORT:-18080}
# shellcheck source=scripts/_docker.sh
. "$REPO/scripts/_docker.sh"
BASE=$DOCKER_BASE
if curl -s -o /dev/null "http://127.0.0.1:$PORT/"; then
    echo "$0: something already answers on port $PORT (the serve check's); set PORT" >&2
    exit 2
fi
WORK=$(mktemp -d)
CONTAINER=""
WORKTREES=()

log() { echo "image_size: $*" >&2; }

cleanup() {
    if [ -n "$CONTAINER" ]; then docker rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
    for wt in "${WORKTREES[@]}"; do git -C "$REPO" worktree remove --force "$wt" || true; done
    docker_stop
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. A Docker engine, and 2. the base image (or its stand-in).
docker_start "$WORK"
docker_base "$WORK"

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

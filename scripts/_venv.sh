# Sourced by the scripts: make .venv hold this checkout: the runtime (duetide, root
# pyproject.toml) and its tooling (duetide-tools, shared/tools) with the local stack.
# `ensure_venv dev` adds the test and lint tools. The runtime's dependencies are held to
# the image's versions (requirements.lock, see scripts/lock), so that the tests and the
# local stack run on what ships; the tools resolve freely. Re-installs only when a
# pyproject.toml or the lock changed since the last install, and says nothing otherwise.
#
# The first run takes about 20 s, mostly pip: it says what it does, a line per step, and
# on a terminal the package pip is at; pip's whole output goes to .venv/pip.log, whose
# end is shown when pip fails.
ensure_venv() {
  local extras="$1" stamp=".venv/.installed-$1" started=$SECONDS
  local runtime="." tools="./shared/tools[local]"
  [ "$extras" = "local" ] || runtime=".[$extras]"
  if [ ! -x .venv/bin/python ]; then
    _venv_say "creating .venv (first run: about 20 s)"
    "${PYTHON:-python3}" -m venv .venv
    _venv_say "upgrading pip"
    _venv_pip --quiet --upgrade pip
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ shared/tools/pyproject.toml -nt "$stamp" ] \
    || [ requirements.lock -nt "$stamp" ]; then
    [ -f "$stamp" ] && _venv_say "pyproject.toml or requirements.lock changed: updating .venv"
    _venv_say "resolving duetide${runtime#.} and duetide-tools[local] (held to requirements.lock)"
    # As constraints, without the hashes: a hash anywhere puts pip in hash-checking mode
    # for every package, the tools included.
    sed -n 's/^\([a-z0-9][a-z0-9._-]*==[^ ;]*\).*/\1/p' requirements.lock >.venv/constraints.txt
    _venv_pip -c .venv/constraints.txt -e "$runtime" -e "$tools"
    touch "$stamp"
    _venv_say ".venv is ready ($((SECONDS - started)) s)"
  fi
}

_venv_say() {
  echo "duetide: $*" >&2
}

# pip install with its output in .venv/pip.log and, on the console, only what _venv_progress
# makes of it; pip's exit status.
_venv_pip() {
  local status=0
  PYTHONUNBUFFERED=1 .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off "$@" 2>&1 \
    | tee -a .venv/pip.log | _venv_progress || status=$?
  if [ "$status" -ne 0 ]; then
    _venv_say "pip failed (exit $status); the end of .venv/pip.log:"
    tail -n 25 .venv/pip.log >&2
  fi
  return "$status"
}

# One line per package on a terminal, rewritten in place ("  12  collecting sqlalchemy"),
# then "installing N packages"; elsewhere (a log, CI) just the latter.
_venv_progress() {
  local line count=0 tty=0
  [ -t 2 ] && tty=1
  while IFS= read -r line; do
    case "$line" in
      Collecting\ * | Obtaining\ *)
        count=$((count + 1))
        line="${line,}"
        line="${line%% (from *}"
        [ "$tty" = 1 ] && printf '\r\033[K  %3d  %s' "$count" "${line:0:90}" >&2
        ;;
      Installing\ collected\ packages:*)
        [ "$tty" = 1 ] && printf '\r\033[K' >&2
        line="${line#*: }"
        count=$(($(tr -cd , <<<"$line" | wc -c) + 1))
        _venv_say "installing $count package$([ "$count" = 1 ] || echo s)"
        count=0
        ;;
    esac
  done
  [ "$tty" = 1 ] && [ "$count" -gt 0 ] && printf '\r\033[K' >&2
  return 0
}

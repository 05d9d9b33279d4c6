# Sourced by the scripts: make .venv hold this checkout: the runtime (duetide, root
# pyproject.toml) and its tooling (duetide-tools, shared/tools) with the local stack.
# `ensure_venv dev` adds the test and lint tools. The runtime's dependencies are held to
# the image's versions (requirements.lock, see scripts/lock), so that the tests and the
# local stack run on what ships; the tools resolve freely. Re-installs only when a
# pyproject.toml or the lock changed since the last install.
ensure_venv() {
  local extras="$1" stamp=".venv/.installed-$1"
  local runtime="." tools="./shared/tools[local]"
  [ "$extras" = "local" ] || runtime=".[$extras]"
  if [ ! -x .venv/bin/python ]; then
    echo "duetide: creating .venv" >&2
    "${PYTHON:-python3}" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ shared/tools/pyproject.toml -nt "$stamp" ] \
    || [ requirements.lock -nt "$stamp" ]; then
    echo "duetide: installing $runtime and $tools into .venv" >&2
    # As constraints, without the hashes: a hash anywhere puts pip in hash-checking mode
    # for every package, the tools included.
    sed -n 's/^\([a-z0-9][a-z0-9._-]*==[^ ;]*\).*/\1/p' requirements.lock >.venv/constraints.txt
    .venv/bin/python -m pip install --quiet --disable-pip-version-check \
      -c .venv/constraints.txt -e "$runtime" -e "$tools"
    touch "$stamp"
  fi
}

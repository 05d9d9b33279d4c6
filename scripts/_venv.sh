# Sourced by the scripts: make .venv hold this checkout: the runtime (duetide, root
# pyproject.toml) and its tooling (duetide-tools, shared/tools) with the local stack.
# `ensure_venv dev` adds the test and lint tools. Re-installs only when a pyproject.toml
# changed since the last install.
ensure_venv() {
  local extras="$1" stamp=".venv/.installed-$1"
  local runtime="." tools="./shared/tools[local]"
  [ "$extras" = "local" ] || runtime=".[$extras]"
  if [ ! -x .venv/bin/python ]; then
    echo "duetide: creating .venv" >&2
    "${PYTHON:-python3}" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ shared/tools/pyproject.toml -nt "$stamp" ]; then
    echo "duetide: installing $runtime and $tools into .venv" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$runtime" -e "$tools"
    touch "$stamp"
  fi
}

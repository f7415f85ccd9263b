#!/usr/bin/env bash
# Prove the Binder recipe: a fresh venv installs from binder/ exactly as repo2docker does
# (pip install -r binder/requirements.txt from the repository root), runs binder/postBuild
# with a fresh HOME, then executes every tutorial notebook against the data it prepared.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
export HOME="$work/home" PIP_RETRIES=0 PIP_TIMEOUT=5
mkdir -p "$HOME"
python -m pip install -q --upgrade pip
# this machine has the CPU wheel on disk; Binder gets it from the extra index in requirements.txt
python -m pip install -q torch==2.13.0
if ! python -m pip install -q -r binder/requirements.txt >"$work/pip.log" 2>&1; then
  grep -v -i "retrying\|warning: location" "$work/pip.log"; exit 1
fi
python -c "import radiobject.ml, radiobject.widgets, jupyterlab" # the install worked
bash binder/postBuild
test -d "$HOME/.cache/radiobject/sample-small" || { echo "postBuild made no sample data"; exit 1; }
for nb in notebooks/[0-9]*.ipynb; do
  echo "binder: executing $nb"
  jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=600 \
    --output "$work/out.ipynb" "$nb" >/dev/null
done
echo "binder recipe: install, postBuild and all notebooks OK"

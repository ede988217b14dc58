#!/usr/bin/env bash
# estimator-vgg launcher. On first use it creates .venv beside this file and installs the
# package with its pinned dependencies; later runs reuse it (and reinstall when setup.cfg or
# pyproject.toml change).
#   ./run.sh CONFIG.yaml [section.key=value ...]   run the job
#   ./run.sh test [pytest args ...]                 run the test suite (installs Ray too)
#   ESTIMATOR_VGG_RAY=1 ./run.sh CONFIG.yaml ...    also install Ray, for run.executor: ray
#   PYTHON=/path/to/python3.11 ./run.sh ...         choose the interpreter for a new .venv
#                                                   (delete .venv to switch interpreters)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"

pick_python() {
  # TensorFlow 2.15, the last release with tf.estimator, supports Python 3.9 to 3.11 only.
  local c v
  if [ -n "${PYTHON:-}" ]; then  # asked for by name: use it or say why not, never another
    v="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || {
      echo "run.sh: PYTHON=$PYTHON does not run as a Python interpreter." >&2; return 1; }
    case "$v" in
      3.9|3.10|3.11) echo "$PYTHON"; return 0 ;;
    esac
    echo "run.sh: PYTHON=$PYTHON is Python $v; estimator-vgg needs Python 3.9, 3.10 or 3.11" \
         "(TensorFlow 2.15, the last release with tf.estimator, supports no other)." >&2
    return 1
  fi
  for c in python3.11 python3.10 python3.9 python3; do
    command -v "$c" >/dev/null 2>&1 || continue
    v="$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || continue
    case "$v" in
      3.9|3.10|3.11) echo "$c"; return 0 ;;
    esac
  done
  echo "run.sh: no Python 3.9-3.11 found (python3 is $(python3 --version 2>/dev/null || echo missing))." \
       "estimator-vgg needs Python 3.9, 3.10 or 3.11 because TensorFlow 2.15, the last release" \
       "with tf.estimator, supports no other. Install Python 3.11 (for example" \
       "'pyenv install 3.11' or your system's python3.11 package) and run again, or point" \
       "PYTHON=/path/to/python3.11 at it." >&2
  return 1
}

stamp() { cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | cksum | cut -d' ' -f1; }

# Extras to install: the tests need Ray (they start a Ray cluster); a job needs it only for
# run.executor: ray, asked for with ESTIMATOR_VGG_RAY=1. Once installed, an extra stays.
want_extras() {
  if [ "${1:-}" = "test" ] || [ "${ESTIMATOR_VGG_RAY:-0}" = "1" ]; then echo "test,ray"
  else echo "test"; fi
}

bootstrap() {
  local want extras have_sum="" have_extras="" stampf="$VENV/.estimator-vgg-stamp"
  want="$(stamp)"; extras="$(want_extras "${1:-}")"
  if [ -f "$stampf" ]; then read -r have_sum have_extras < "$stampf" || true; fi
  case ",${have_extras:-test}," in *,ray,*) extras="test,ray" ;; esac
  if [ -x "$VENV/bin/python" ] && [ "$have_sum" = "$want" ] &&
     [ "${have_extras:-test}" = "$extras" ]; then
    return 0
  fi
  local py; py="$(pick_python)"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "run.sh: first use: creating $VENV with $py ($("$py" --version 2>&1))" >&2
    "$py" -m venv "$VENV"
  fi
  echo "run.sh: installing estimator-vgg[$extras] and its pinned dependencies (TensorFlow" \
       "2.15.1 is about 500 MB; this takes a few minutes once)" >&2
  local logf="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
         "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$ROOT[$extras]"; } \
       >"$logf" 2>&1; then
    tail -n 30 "$logf" >&2
    echo "run.sh: installing the dependencies failed; the whole log is in $logf" >&2
    return 1
  fi
  echo "$want $extras" > "$stampf"
}

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  if [ -x "$VENV/bin/python" ]; then echo; exec "$VENV/bin/python" -m estimator_vgg --help; fi
  exit 0
fi

bootstrap "$1"
if [ "$1" = "test" ]; then
  shift
  cd "$ROOT"
  exec "$VENV/bin/python" -m pytest "$@"
fi
exec "$VENV/bin/python" -m estimator_vgg "$@"

#!/usr/bin/env bash
# estimator-vgg launcher. On first use it creates .venv beside this file (Python 3.11) and
# installs the package through the lock file constraints-py311.txt; later runs reuse it (and
# reinstall when setup.cfg, pyproject.toml or the lock change). Details: docs/install.md.
#   ./run.sh CONFIG.yaml [section.key=value ...]   run the job
#   ./run.sh test [pytest args ...]                 run the test suite (installs Ray, the
#                                                   remote and the search extras too)
#   ./run.sh test --quick [pytest args ...]         the inner-loop tier, 2-4 minutes
#   ESTIMATOR_VGG_RAY=1 ./run.sh CONFIG.yaml ...    also install Ray, for run.executor: ray
#   ESTIMATOR_VGG_REMOTE=1 ./run.sh CONFIG.yaml ... also install fsspec, s3fs and gcsfs, for
#                                                   s3://, gs://, http(s):// inputs
#   ESTIMATOR_VGG_GPU=1 ./run.sh CONFIG.yaml ...    also install TensorFlow's CUDA 12 and cuDNN
#                                                   pip packages, for a GPU machine (NVIDIA
#                                                   driver needed; about 2 GB more, once)
#   ESTIMATOR_VGG_SEARCH=1 ./run.sh ...             also install faiss, for `estimator-vgg index`
#   (an installed extra stays installed)
#   PYTHON=/path/to/python3.11 ./run.sh ...         choose the interpreter for a new .venv
#                                                   (delete .venv to switch interpreters)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"

LOCK="$ROOT/constraints-py311.txt"
# Only Python 3.11: TensorFlow 2.15, the last release with tf.estimator, supports 3.9 to 3.11,
# but the locked, tested dependency set (constraints-py311.txt) is for 3.11.
WHY_311="TensorFlow 2.15, the last release with tf.estimator, supports Python 3.9-3.11, and"
WHY_311="$WHY_311 the locked, tested dependency set (constraints-py311.txt) is for 3.11"

py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

pick_python() {
  local c v
  if [ -n "${PYTHON:-}" ]; then  # asked for by name: use it or say why not, never another
    v="$(py_version "$PYTHON")" || {
      echo "run.sh: PYTHON=$PYTHON does not run as a Python interpreter." >&2; return 1; }
    if [ "$v" = "3.11" ]; then echo "$PYTHON"; return 0; fi
    echo "run.sh: PYTHON=$PYTHON is Python $v; estimator-vgg needs Python 3.11 ($WHY_311)." \
         "Point PYTHON=/path/to/python3.11 at a 3.11 interpreter." >&2
    return 1
  fi
  for c in python3.11 python3; do
    command -v "$c" >/dev/null 2>&1 || continue
    v="$(py_version "$c")" || continue
    if [ "$v" = "3.11" ]; then echo "$c"; return 0; fi
  done
  echo "run.sh: no Python 3.11 found (python3 is $(python3 --version 2>/dev/null || echo missing))." \
       "estimator-vgg needs Python 3.11: $WHY_311. Install Python 3.11 (for example" \
       "'pyenv install 3.11' or your system's python3.11 package) and run again, or point" \
       "PYTHON=/path/to/python3.11 at it." >&2
  return 1
}

# Reinstall when the package metadata or the lock change.
stamp() { cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$LOCK" | cksum | cut -d' ' -f1; }

# Extras to install: the tests need Ray (they start a Ray cluster), the remote extra (they
# read from S3 and HTTP servers on loopback) and faiss (the search tests); a job needs them
# only for run.executor: ray (ESTIMATOR_VGG_RAY=1), remote inputs (ESTIMATOR_VGG_REMOTE=1) and
# `estimator-vgg index` (ESTIMATOR_VGG_SEARCH=1). ESTIMATOR_VGG_GPU=1 adds the gpu extra
# (TensorFlow's CUDA pip packages). Once installed, an extra stays: $1 is the extras the stamp
# says are installed.
want_extras() {
  local have=",${1:-test}," cmd="${2:-}" out="test" x
  case "$have" in *,ray,*) ;; *)
    if [ "$cmd" = "test" ] || [ "${ESTIMATOR_VGG_RAY:-0}" = "1" ]; then have="$have,ray,"; fi ;;
  esac
  case "$have" in *,remote,*) ;; *)
    if [ "$cmd" = "test" ] || [ "${ESTIMATOR_VGG_REMOTE:-0}" = "1" ]; then
      have="$have,remote,"; fi ;;
  esac
  case "$have" in *,search,*) ;; *)
    if [ "$cmd" = "test" ] || [ "${ESTIMATOR_VGG_SEARCH:-0}" = "1" ]; then
      have="$have,search,"; fi ;;
  esac
  [ "${ESTIMATOR_VGG_GPU:-0}" = "1" ] && have="$have,gpu,"
  for x in ray remote search gpu; do
    case "$have" in *,"$x",*) out="$out,$x" ;; esac
  done
  echo "$out"
}

bootstrap() {
  local want extras have_sum="" have_extras="" stampf="$VENV/.estimator-vgg-stamp" v
  if [ ! -f "$LOCK" ]; then
    echo "run.sh: the lock file $LOCK is missing; make it with tools/refresh_lock.sh" >&2
    return 1
  fi
  want="$(stamp)"
  if [ -f "$stampf" ]; then read -r have_sum have_extras < "$stampf" || true; fi
  extras="$(want_extras "${have_extras:-test}" "${1:-}")"
  if [ -x "$VENV/bin/python" ] && [ "$have_sum" = "$want" ] &&
     [ "${have_extras:-test}" = "$extras" ]; then
    return 0
  fi
  local py
  if [ ! -x "$VENV/bin/python" ]; then
    py="$(pick_python)"
    echo "run.sh: first use: creating $VENV with $py ($("$py" --version 2>&1))" >&2
    "$py" -m venv "$VENV"
  else
    v="$(py_version "$VENV/bin/python")" || v="unknown"
    if [ "$v" != "3.11" ]; then
      echo "run.sh: $VENV is Python $v; estimator-vgg needs Python 3.11 ($WHY_311)." \
           "Delete $VENV and run again to recreate it with Python 3.11." >&2
      return 1
    fi
  fi
  if [ -n "$have_sum" ]; then
    echo "run.sh: setup.cfg, pyproject.toml, the lock or the extras changed: installing" \
         "estimator-vgg[$extras] through constraints-py311.txt" >&2
  else
    echo "run.sh: installing estimator-vgg[$extras] through constraints-py311.txt (TensorFlow" \
         "2.15.1 is about 500 MB; this takes a few minutes once)" >&2
  fi
  case ",$extras," in *,gpu,*)
    echo "run.sh: the gpu extra adds TensorFlow's CUDA 12 and cuDNN 8 pip packages (about" \
         "2 GB of downloads more; an NVIDIA driver is needed to use them)" >&2 ;;
  esac
  local logf="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check -c "$LOCK" --upgrade pip &&
         "$VENV/bin/python" -m pip install --disable-pip-version-check -c "$LOCK" \
           -e "$ROOT[$extras]"; } >"$logf" 2>&1; then
    tail -n 30 "$logf" >&2
    echo "run.sh: installing the dependencies failed; the whole log is in $logf" >&2
    return 1
  fi
  echo "$want $extras" > "$stampf"
}

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  if [ -x "$VENV/bin/python" ]; then echo; exec "$VENV/bin/python" -m estimator_vgg --help; fi
  exit 0
fi

bootstrap "$1"
if [ "$1" = "test" ]; then
  shift
  cd "$ROOT"
  # Two test processes (pytest-xdist), one file each at a time: most tests wait on a job's
  # start-up (imports, graph build), so two share the 2 cores well (docs/development.md).
  # --quick: the inner-loop tier (tests marked quick). Other arguments go on to pytest.
  tier=()
  if [ "${1:-}" = "--quick" ]; then shift; tier=(-m quick); fi
  exec "$VENV/bin/python" -m pytest -n "${ESTIMATOR_VGG_TEST_WORKERS:-2}" --dist loadfile \
    "${tier[@]}" "$@"
fi
exec "$VENV/bin/python" -m estimator_vgg "$@"

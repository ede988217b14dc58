#!/usr/bin/env bash
# Rewrites constraints-py311.txt, the lock file run.sh and CI install through: every package
# that `pip install -e '.[test,ray,remote,search,gpu]'` would install on Python 3.11 (Linux x86_64),
# pinned with ==, sorted, estimator-vgg itself left out. Run it after changing a dependency in
# setup.cfg, then commit setup.cfg and the lock together.
#   tools/refresh_lock.sh                       uses python3.11 from PATH
#   PYTHON=/path/to/python3.11 tools/refresh_lock.sh
# It resolves in a fresh temporary venv, ignoring the current lock, with
# `pip install --dry-run --ignore-installed --report`: pip reads the wheels' metadata files
# from the registry (PEP 658) and downloads no wheel, so the gpu extra's CUDA packages (several
# GB) are resolved, not fetched. Needs network access to the package index; takes a minute.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$ROOT/constraints-py311.txt"
EXTRAS="test,ray,remote,search,gpu"
PY="${PYTHON:-python3.11}"

v="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || {
  echo "refresh_lock.sh: $PY does not run as a Python interpreter; set PYTHON=/path/to/python3.11" >&2
  exit 1; }
if [ "$v" != "3.11" ]; then
  echo "refresh_lock.sh: $PY is Python $v; the lock is for Python 3.11 (set PYTHON=)" >&2
  exit 1
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/estimator-vgg-lock.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
# Resolve from a copy of the project's metadata so the working tree gets no build output.
mkdir -p "$TMP/src/estimator_vgg"
cp "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$ROOT/README.md" "$TMP/src/"
if [ -f "$ROOT/setup.py" ]; then cp "$ROOT/setup.py" "$TMP/src/"; fi
: > "$TMP/src/estimator_vgg/__init__.py"

echo "refresh_lock.sh: fresh venv with $PY ($("$PY" --version 2>&1)) in $TMP" >&2
"$PY" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
"$VPY" -m pip install --disable-pip-version-check -q --upgrade pip
PIP_VERSION="$("$VPY" -c 'import importlib.metadata as m; print(m.version("pip"))')"

echo "refresh_lock.sh: resolving estimator-vgg[$EXTRAS] with pip $PIP_VERSION (no constraints)" >&2
# PIP_CONSTRAINT= : no constraints file from the environment or a pip.conf either.
PIP_CONSTRAINT= "$VPY" -m pip install --disable-pip-version-check -q --dry-run --ignore-installed \
  --report "$TMP/report.json" "$TMP/src[$EXTRAS]"

"$VPY" - "$TMP/report.json" "$LOCK.new" "$PIP_VERSION" "$EXTRAS" "$("$PY" --version 2>&1)" <<'PYEOF'
import datetime, json, platform, re, sys
report_path, out_path, pip_version, extras, py_version = sys.argv[1:]
report = json.load(open(report_path))
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pins = {}
for item in report["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if norm(name) == "estimator-vgg":
        continue
    if "download_info" in item and "vcs_info" in item["download_info"]:
        sys.exit(f"refresh_lock.sh: {name} resolves to a VCS URL; the lock holds index releases only")
    pins[norm(name)] = version
# run.sh first upgrades pip in the new venv; lock it too, at the version that resolved this set.
pins.setdefault("pip", pip_version)
today = datetime.date.today().isoformat()
with open(out_path, "w") as f:
    f.write(
        "# constraints-py311.txt: the locked dependency set of estimator-vgg, for Python 3.11.\n"
        f"# Made by tools/refresh_lock.sh on {today}: a fresh {py_version} venv "
        f"({platform.system()} {platform.machine()}),\n"
        f"# pip {pip_version}, `pip install --dry-run --ignore-installed --report` of "
        f"estimator-vgg[{extras}]\n"
        "# without constraints; every resolved package pinned, estimator-vgg itself left out.\n"
        "# Do not edit by hand: change setup.cfg and run tools/refresh_lock.sh.\n"
        "# run.sh installs through it: pip install -c constraints-py311.txt -e '.[extras]'\n"
    )
    for name in sorted(pins):
        f.write(f"{name}=={pins[name]}\n")
print(f"refresh_lock.sh: {len(pins)} packages pinned", file=sys.stderr)
PYEOF
mv "$LOCK.new" "$LOCK"
echo "refresh_lock.sh: wrote $LOCK" >&2

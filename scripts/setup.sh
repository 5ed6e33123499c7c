#!/usr/bin/env bash
# Set up qamoe in ./.venv, idempotently: safe to run again on a machine that has it.
#   bash scripts/setup.sh          runtime only (enough for `qamoe demo`)
#   bash scripts/setup.sh --dev    plus pytest, ruff, mypy, Optuna (`qamoe tune`), MLflow and W&B
#   bash scripts/setup.sh --media  plus the raw-media extractors (qamoe[media], openSMILE)
# torch: installed first, pinned to QAMOE_TORCH (default 2.13.0, a CPU build on the team's
# machines). Set QAMOE_TORCH_INDEX to a wheel index (e.g. https://download.pytorch.org/whl/cpu)
# to choose a build elsewhere; a torch that is already installed is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=()
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev tune mlflow wandb) ;;
    --media) extras+=(media media-opensmile) ;;
    *) echo "setup.sh: unknown option $arg (use --dev, --media)" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

# pip, with its output shown only on failure (this machine's pip config names some missing
# local indexes, and their warnings are noise).
quiet_pip() {
  local log
  if ! log=$("${pip[@]}" "$@" 2>&1); then
    echo "$log" >&2
    echo "setup.sh: 'pip $*' failed (see above)" >&2
    exit 1
  fi
  echo "$log" | grep -v "^WARNING: Location" >&2 || true
}

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  index=()
  if [ -n "${QAMOE_TORCH_INDEX:-}" ]; then index=(--index-url "$QAMOE_TORCH_INDEX"); fi
  quiet_pip install "torch==${QAMOE_TORCH:-2.13.0}" "${index[@]}"
fi

spec="."
if [ ${#extras[@]} -gt 0 ]; then spec=".[$(IFS=,; echo "${extras[*]}")]"; fi
quiet_pip install -e "$spec"
.venv/bin/python -c "import qamoe_core, qamoe_cli.main" # fails loudly if the install did not take
echo "qamoe is set up in .venv ($(.venv/bin/qamoe --version))" >&2

#!/usr/bin/env bash
# The README's first command. Creates .venv on first use (scripts/env.sh), then runs the
# embedded offline demo: `lightning-prune fit` with no config (scikit-learn's digits, a small
# CNN, 75% of the FLOPs removed, collapsed and saved under runs/demo/version_N/).
#
#   bash scripts/run.sh                                  # the demo
#   bash scripts/run.sh --trainer.max_epochs=1           # extra arguments are passed on
#   bash scripts/run.sh --config configs/cifar10_resnet56.yaml --data.data_dir=/data/cifar10
#   bash scripts/run.sh test --ckpt_path=runs/demo/version_0/checkpoints/collapsed.ckpt
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
case "${1:-}" in
  fit | validate | test | predict) exec lightning-prune "$@" ;;
  *) exec lightning-prune fit "$@" ;;
esac

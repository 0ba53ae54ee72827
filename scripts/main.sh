#!/usr/bin/env bash
# The main job: install everything, then train the Fashion-MNIST reference MLP
# (784-256-256-10, hEP N = 2, beta 0.05; configs/fmnist-mlp-hep.toml).
#   EPOCHS=1 bash scripts/main.sh     # a first look: one epoch (~40 s on 2 cores, ~80% test accuracy)
#   bash scripts/main.sh              # the full 50-epoch reference run
set -euo pipefail
cd "$(dirname "$0")/.."

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist).
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

python3 -m pip install -q -e .

args=()
[ -n "${EPOCHS:-}" ] && args+=(--epochs "$EPOCHS")
exec eqprop train configs/fmnist-mlp-hep.toml --out "${OUT:-runs/fmnist-mlp-hep-$(date +%Y%m%d-%H%M%S)}" "${args[@]}"

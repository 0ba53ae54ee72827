#!/usr/bin/env bash
# The benchmarks that need a GPU, in one script (run it where one is lent):
#   bash benchmarks/gpu.sh [OUT_DIR]
# Writes OUT_DIR/*.json and *.txt (default: gpu-bench). Each part is independent; one
# that fails is reported and the others still run.
set -u
out=${1:-gpu-bench}
mkdir -p "$out"
run() {  # name, command...
    local name=$1; shift
    echo "== $name: $*"
    if ! "$@" > "$out/$name.txt" 2>&1; then echo "   FAILED (see $out/$name.txt)"; fi
    tail -n 12 "$out/$name.txt"
}
python -c "import jax; print(jax.devices())"
# Fashion-MNIST where it is installed; else the synthetic set at the reference MLP's width
if python -c "from eqprop.data import load; load('fashion-mnist')" 2>/dev/null; then data=(); else
    data=(--set data.name=synthetic --set "model.sizes=[16, 256, 256, 4]"); fi
# issue 14 item 7: the relaxation loop's unroll factor (fixed 150/20 steps, the reference MLP)
run unroll-mlp python benchmarks/unroll.py configs/fmnist-mlp-hep.toml "${data[@]}" \
    --unroll 1,2,4,8,16,32 --rounds 5 --json "$out/unroll-mlp.json"
# the trainer's host overhead beyond its steps and evaluation
run overhead python benchmarks/overhead.py configs/fmnist-mlp-hep-fast.toml "${data[@]}" \
    --epochs 2 --rounds 3 --json "$out/overhead.json"
# the step benchmark of the reference MLP (ms/step, floor, EP over implicit and BPTT)
run step python benchmarks/run.py --quick --json "$out/step.json"
if python benchmarks/run.py --help 2>/dev/null | grep -q -- "--model"; then
    # issue 13 item 6: the papers' CNN (configs/cifar10-cnn-hep.toml: 128-256-512, out 512,
    # bfloat16 compute) at their batch 256 and 250/40 steps on CIFAR-shaped synthetic data;
    # its s/epoch (195 steps) compares with the 2022 paper's 230 s (BP 8 s) per CIFAR-10 epoch
    run cnn python benchmarks/run.py --model cnn --config configs/cifar10-cnn-hep.toml \
        --batch 256 --steps 250/40 --data cifar-shaped --json "$out/cnn.json"
fi

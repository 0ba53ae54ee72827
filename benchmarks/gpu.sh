#!/usr/bin/env bash
# The benchmarks that need a GPU, in one script (run it where one is lent):
#   bash benchmarks/gpu.sh [OUT_DIR [PART ...]]
# PART is any of unroll-mlp, overhead, step, cnn, fmnist-cnn (default: all, in that order).
# Writes OUT_DIR/*.json and *.txt (default: gpu-bench), and for fmnist-cnn the two run
# directories OUT_DIR/fmnist-cnn-{hep,bp}. Each part is independent; one that fails is
# reported and the others still run; the exit status is 1 if any part failed. PYTHON picks
# the interpreter (default python3);
# GPU_SEEDS and GPU_EPOCHS size fmnist-cnn (default 8 seeds and 15 epochs, as the `--epochs 15`
# runs of docs/results.md; the configs ship 5);
# GPU_SET adds space-separated SECTION.KEY=VALUE settings to both of its runs.
set -u
out=${1:-gpu-bench}
shift || true
parts=${*:-unroll-mlp overhead step cnn fmnist-cnn}
py=${PYTHON:-python3}
mkdir -p "$out"
failed=0
want() { [[ " $parts " == *" $1 "* ]]; }
run() {  # name, command...
    local name=$1; shift
    echo "== $name: $*"
    local ok=0
    if ! "$@" > "$out/$name.txt" 2>&1; then echo "   FAILED (see $out/$name.txt)"; failed=1; ok=1; fi
    tail -n 14 "$out/$name.txt"
    return $ok
}
eqprop() { "$py" -m eqprop "$@"; }  # the command, also where eqprop is not on PATH
"$py" -c "import jax; print(jax.__version__, jax.devices())"
# Fashion-MNIST where it is installed; else the synthetic set at the reference MLP's width
if "$py" -c "from eqprop.data import load; load('fashion-mnist')" 2>/dev/null; then fmnist=1; data=(); else
    fmnist=0; data=(--set data.name=synthetic --set "model.sizes=[16, 256, 256, 4]"); fi
# the relaxation loop's unroll factor (fixed 150/20 steps, the reference MLP)
want unroll-mlp && run unroll-mlp "$py" benchmarks/unroll.py configs/fmnist-mlp-hep.toml ${data[@]+"${data[@]}"} \
    --unroll 1,2,4,8,16,32 --rounds 5 --json "$out/unroll-mlp.json"
# the trainer's host overhead beyond its steps and evaluation
want overhead && run overhead "$py" benchmarks/overhead.py configs/fmnist-mlp-hep-fast.toml ${data[@]+"${data[@]}"} \
    --epochs 2 --rounds 3 --json "$out/overhead.json"
# the step benchmark of the reference MLP (ms/step, floor, EP over implicit and BPTT)
want step && run step "$py" benchmarks/run.py --quick --json "$out/step.json"
# the papers' CNN (configs/cifar10-cnn-hep.toml: 128-256-512, out 512, bfloat16 compute) at
# their batch 256 and 250/40 steps on CIFAR-shaped synthetic data; its s/epoch (195 steps)
# compares with the 2022 paper's 230 s (BP 8 s) per CIFAR-10 epoch
want cnn && run cnn "$py" benchmarks/run.py --model cnn --config configs/cifar10-cnn-hep.toml \
    --batch 256 --steps 250/40 --data cifar-shaped --quick --json "$out/cnn.json"
# hEP against its BP twin on Fashion-MNIST over GPU_SEEDS seeds trained together (seed 0 is
# the configs' own): the per-seed gap at each epoch, from the two runs' metrics.jsonl
# (`python benchmarks/gap.py OUT_DIR/fmnist-cnn-hep OUT_DIR/fmnist-cnn-bp`). The two share
# the GPU (each a small-batch, launch-bound program), so neither is a timing.
if want fmnist-cnn; then
    if [[ $fmnist == 1 ]]; then
        extra=(); for kv in ${GPU_SET:-}; do extra+=(--set "$kv"); done
        pids=()
        for est in hep bp; do
            (export XLA_PYTHON_CLIENT_MEM_FRACTION=0.4
             run "fmnist-cnn-$est" eqprop train "fmnist-cnn-$est" --epochs "${GPU_EPOCHS:-15}" \
                 --set "train.seeds=${GPU_SEEDS:-8}" ${extra[@]+"${extra[@]}"} -o "$out/fmnist-cnn-$est") &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
        "$py" benchmarks/gap.py "$out/fmnist-cnn-hep" "$out/fmnist-cnn-bp" | tee "$out/fmnist-gap.txt"
    else
        echo "== fmnist-cnn: skipped (Fashion-MNIST is not installed: eqprop datasets)"
    fi
fi
exit $failed

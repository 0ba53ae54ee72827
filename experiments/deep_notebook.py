"""The authors' DEEP XOR procedure, independent of eqprop: a NumPy transcription of
``logical_operations_DEEP.ipynb`` (binary: one output neuron read at 0.5) and
``logical_operations_DEEP_oh.ipynb`` (``--nout 2``: one-hot) from the public repository
MatildeTristany/DEEP-model-ESANN-2020 (Farinha et al. 2020, arXiv 2006.08798), vectorised
over ``--nets`` networks. The defaults are the binary notebook's: weights N(0, 0.05) with
nothing into the inputs or the bias and no self-loops, free states drawn from U(0, 0.1)
afresh every epoch, dt 0.05, T1 = T2 = 1000 Euler steps clipped to [0, 1], beta 10, full
batch of 4, lr 100, 200 epochs; the rule is the mean over the nudged phase of
outer(s_t, s_t - s_{t-1}). Each option changes one thing.

    python experiments/deep_notebook.py --nets 20 --seed 0

prints JSON: the per-network error of the last epoch's free phase (the notebook's own
metric), of the notebook's test (twice dt), and from a zero state (eqprop's evaluation),
and how many networks solved XOR by each. docs/directed.md has the figures: the paper's
procedure solves about a quarter of the networks, which is what eqprop's xor-deep does.
"""
import argparse, json, time
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--nets", type=int, default=10)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--nout", type=int, default=1)          # 1: binary notebook, 2: one-hot notebook
p.add_argument("--hidden", type=int, default=5)
p.add_argument("--beta", type=float, default=10.0)
p.add_argument("--lr", type=float, default=100.0)
p.add_argument("--epochs", type=int, default=200)
p.add_argument("--T1", type=int, default=1000)
p.add_argument("--T2", type=int, default=1000)
p.add_argument("--dt", type=float, default=0.05)
p.add_argument("--init", default="uniform")           # uniform: U(0,0.1) fresh each epoch; zeros; persist
p.add_argument("--wstd", type=float, default=0.05)
p.add_argument("--s0max", type=float, default=0.1)
p.add_argument("--sign", type=int, default=0)
p.add_argument("--online", type=int, default=0)
a = p.parse_args()

rng = np.random.default_rng(a.seed)
X = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]], float)
y = np.array([0, 1, 1, 0])
Y = y[:, None].astype(float) if a.nout == 1 else np.eye(2)[y]
NX, NY, K, B = 3, a.nout, a.nets, 4
N = NX + a.hidden + NY
mask = np.ones((N, N)); np.fill_diagonal(mask, 0); mask[:, :NX] = 0


def relax(W, S, T, dt, beta=0.0, traj=False):
    leak = W.sum(2)[:, None, :]                       # sum_k W_jk  (K,1,N)
    acc = np.zeros_like(W) if traj else None
    for _ in range(T):
        dS = S @ W - S * leak
        if beta:
            dS[..., -NY:] += beta * (Y - S[..., -NY:])
        S1 = S.copy()
        S1[..., NX:] = np.clip(S[..., NX:] + dt * dS[..., NX:], 0, 1)
        if traj:
            acc += np.swapaxes(S1, 1, 2) @ (S1 - S)
        S = S1
    return S, acc


def init_states():
    s = rng.uniform(0, a.s0max, (K, B, N - NX)) if a.init != "zeros" else np.zeros((K, B, N - NX))
    return np.concatenate([np.broadcast_to(X, (K, B, NX)), s], 2)


def pred(S):
    o = S[..., -NY:]
    return (o[..., 0] >= 0.5).astype(int) if NY == 1 else np.argmax(o, -1)


W = rng.normal(0, a.wstd, (K, N, N)) * mask
t0 = time.time()
Sp = None
for ep in range(a.epochs):
    S = init_states() if (a.init != "persist" or Sp is None) else Sp
    S, _ = relax(W, S, a.T1, a.dt)
    Sp = S.copy()
    train_err = (pred(S) != y).mean(1)               # errors_class_free of this epoch
    Sn, acc = relax(W, S, a.T2, a.dt, beta=a.beta, traj=True)
    d = acc / (B * a.T2)
    if a.sign: d = np.sign(d)
    W = (W + a.lr * d) * mask
with np.errstate(all="ignore"):
    e_train = train_err                              # notebook's Class_error_free_last
    e_test2 = (pred(relax(W, init_states() if a.init != "zeros" else init_states(), a.T1, 2 * a.dt)[0]) != y).mean(1)
    z = np.concatenate([np.broadcast_to(X, (K, B, NX)), np.zeros((K, B, N - NX))], 2)
    e_zero = (pred(relax(W, z, a.T1, a.dt)[0]) != y).mean(1)
nan = ~np.isfinite(W).all((1, 2))
res = dict(args=vars(a), train_free_err=e_train.tolist(), test_2dt_err=e_test2.tolist(),
           zero_init_err=e_zero.tolist(), nan=nan.tolist(),
           solved_train=int((e_train == 0).sum()), solved_test2dt=int((e_test2 == 0).sum()),
           solved_zero=int((e_zero == 0).sum()), secs=round(time.time() - t0, 1))
print(json.dumps({k: v for k, v in res.items() if k != "args"}))

"""The models, batches and training loops shared by the optimizer and projection tests (test_optim.py,
test_dct_projection.py, test_projections_rsvd_adaptive.py): a tiny language model trained on fixed token
batches, and a tiny regression MLP trained full-batch."""

import torch
import torch.nn.functional as F

from lowrank_ops.optim import LowRankAdamW

# A tiny language model: embedding, a residual MLP block, LayerNorm, an output head (optionally tied to
# the embedding) and a layer that is never used (its params get no grads).

VOCAB, DIM, HIDDEN = 13, 12, 20


class TinyLM(torch.nn.Module):
    def __init__(self, tied=False):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, DIM)
        self.norm = torch.nn.LayerNorm(DIM)
        self.fc1 = torch.nn.Linear(DIM, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, DIM)
        self.out = torch.nn.Linear(DIM, VOCAB, bias=False)
        if tied:
            self.out.weight = self.emb.weight
        self.unused = torch.nn.Linear(4, 4)

    def forward(self, tokens):
        h = self.emb(tokens)
        h = h + self.fc2(torch.tanh(self.fc1(self.norm(h))))
        return self.out(h)


def make_model(dtype=torch.float32, tied=False, seed=0):
    torch.manual_seed(seed)
    return TinyLM(tied).to(dtype)


def batch(i, size=16):
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randint(0, VOCAB, (size, 6), generator=g)


def lm_loss(model, tokens):
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def split_groups(model, all_matrices=False, **lowrank):
    """Low-rank group: the 2-D weights (the embedding too when all_matrices); plain group: the rest."""
    lr_params, plain = [], []
    for name, p in model.named_parameters():
        (lr_params if p.dim() == 2 and (all_matrices or not name.startswith("emb")) else plain).append(p)
    return [dict(params=lr_params, **lowrank), dict(params=plain)]


def train(model, opt, steps, start=0, accumulation=1):
    for i in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        for k in range(accumulation):
            loss = lm_loss(model, batch(i * accumulation + k)) / accumulation
            loss.backward()
        opt.step()


def state_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def quadratic_problem(shape, rng):
    """A float64 least-squares problem min_W 0.5 ||W X - Y||^2 / 30 with W of `shape`: the start W0 and the
    data X, Y, drawn from rng in that order."""
    m, n = shape
    W0 = torch.randn(m, n, generator=rng, dtype=torch.float64)
    X = torch.randn(n, 30, generator=rng, dtype=torch.float64)
    Y = torch.randn(m, 30, generator=rng, dtype=torch.float64)
    return W0, X, Y


def quadratic_grad(W, X, Y):
    """Gradient of 0.5 ||W X - Y||^2 / cols: (W X - Y) X^T / cols, in W's dtype."""
    return (W @ X - Y) @ X.T / X.shape[1]


def lowrank_opt(model, kind, **extra):
    """The tiny language model's optimizer of the resume tests: its matrices at rank 3, refreshed every 4 steps."""
    groups = split_groups(model, rank=3, projection=kind, update_gap=4, **extra)
    return LowRankAdamW(groups, lr=5e-3, weight_decay=0.05, seed=11)


def regression_data():
    g = torch.Generator().manual_seed(31)
    X = torch.randn(256, 32, generator=g)
    W1, W2 = torch.randn(64, 32, generator=g) / 32**0.5, torch.randn(16, 64, generator=g) / 8
    return X, torch.tanh(X @ W1.T) @ W2.T


def train_mlp(kind, side, dtype, steps=200):
    """A 32-64-16 tanh MLP on regression_data, full-batch MSE, LowRankAdamW (rank 8 on both weights, update_gap
    25, lr 1e-2; plain AdamW when kind is None): returns (initial loss, final loss)."""
    X, Y = regression_data()
    torch.manual_seed(1)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 16)).to(dtype)
    if kind is None:
        opt = LowRankAdamW(mlp.parameters(), lr=1e-2)
    else:
        weights = [mlp[0].weight, mlp[2].weight]
        opt = LowRankAdamW(
            [
                dict(params=weights, rank=8, projection=kind, side=side),
                dict(params=[mlp[0].bias, mlp[2].bias]),
            ],
            lr=1e-2,
            update_gap=25,
            seed=3,
        )
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(mlp(X.to(dtype)).float(), Y)
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    final = F.mse_loss(mlp(X.to(dtype)).float(), Y).item()
    assert all(torch.isfinite(p).all() for p in mlp.parameters())
    return losses[0], final

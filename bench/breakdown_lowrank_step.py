"""Where the time of LowRankAdamW's projected step goes on the GaLore paper's 60M / 130M Llama shapes (CPU):
the step's parts timed one at a time, as plain torch runs them, beside the fused multi-tensor step.

    python -m bench.breakdown_lowrank_step --config 60m [--kind rademacher] [--threads 2]

Parts (every projected matrix W [m, n], side = the smaller dimension d, rank r; P r x d):
  generate   P for every matrix (lowrank_ops.ops.sketch: what the fused step generates in-kernel)
  project    R = P G (left) or G P^T (right) with P materialized (the floor's first GEMM)
  unproject  N P or P^T N back to [m, n] (the floor's second GEMM)
  moments    the Adam update of exp_avg / exp_avg_sq and the direction on the r-sized tensors (torch foreach)
  update     W += -lr * scale * U over the m x n weights (one read-modify-write of W; torch foreach)
  fused      one LowRankAdamW.step() over the same matrices (the multi-tensor op)
The parts are not additive in the fused step (it overlaps generation with the GEMM and fuses moments and
update into the GEMM epilogues); their sum is the cost of doing the same work as separate passes."""

import argparse
import statistics
import time

import torch

from lowrank_ops import ops
from lowrank_ops.optim import LowRankAdamW

SHAPES = {"60m": (512, 1376, 8, 128), "130m": (768, 2048, 12, 256)}


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=tuple(SHAPES), default="60m")
    ap.add_argument("--kind", default="rademacher")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    h, inter, layers, r = SHAPES[a.config]
    shapes = [(h, h)] * 4 + [(inter, h)] * 2 + [(h, inter)]
    shapes = shapes * layers
    gen = torch.Generator().manual_seed(0)
    Ws = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    Gs = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    lefts = [m <= n for m, n in shapes]
    Ps = [ops.sketch(r, m if left else n, i, a.kind) for i, ((m, n), left) in enumerate(zip(shapes, lefts))]
    Rs = [P @ G if left else G @ P.T for P, G, left in zip(Ps, Gs, lefts)]
    m1 = [torch.zeros_like(R) for R in Rs]
    m2 = [torch.zeros_like(R) for R in Rs]
    Us = [torch.zeros_like(W) for W in Ws]

    def generate():
        for i, ((m, n), left) in enumerate(zip(shapes, lefts)):
            ops.sketch(r, m if left else n, i, a.kind)

    def project():
        for P, G, left, R in zip(Ps, Gs, lefts, Rs):
            torch.matmul(P, G, out=R) if left else torch.matmul(G, P.T, out=R)

    def unproject():
        for P, R, left, U in zip(Ps, Rs, lefts, Us):
            torch.matmul(P.T, R, out=U) if left else torch.matmul(R, P, out=U)

    def moments():
        torch._foreach_lerp_(m1, Rs, 0.1)
        torch._foreach_mul_(m2, 0.999)
        torch._foreach_addcmul_(m2, Rs, Rs, value=0.001)
        denom = torch._foreach_sqrt(m2)
        torch._foreach_add_(denom, 1e-8)
        torch._foreach_div(m1, denom)

    def update():
        torch._foreach_add_(Ws, Us, alpha=-1e-3)

    params = [torch.nn.Parameter(W.clone()) for W in Ws]
    for p, G in zip(params, Gs):
        p.grad = G
    opt = LowRankAdamW([{"params": params, "rank": r}], projection=a.kind, update_gap=10**9, lr=1e-3)
    opt.step()  # state allocation and the first refresh

    parts = {"generate": generate, "project": project, "unproject": unproject, "moments": moments,
             "update": update, "fused": opt.step}
    res = {name: _median_ms(fn, a.repeats) for name, fn in parts.items()}
    floor = res["project"] + res["unproject"]
    print(f"{a.config}, {len(shapes)} matrices, rank {r}, {a.kind}, {a.threads} threads (median of {a.repeats}):")
    for name, ms in res.items():
        print(f"  {name:10s} {ms:8.1f} ms")
    print(f"  GEMMs (project + unproject) {floor:.1f} ms; separate passes in all "
          f"{sum(v for k, v in res.items() if k != 'fused'):.1f} ms; fused step / GEMMs = {res['fused'] / floor:.2f}")


if __name__ == "__main__":
    main()

"""Checks an installed lowrank_ops wheel on a machine without a GPU (CI's wheel stage, .ci/wheel_stage.sh).

    python scripts/check_wheel.py --cuda-arch-list "8.0;9.0a" --version-tag cu130torch2.14

Run it in the venv the wheel was installed into, from a folder outside the source tree: it refuses a
lowrank_ops imported from anywhere but that venv's site-packages. It checks, in order:
  1. import: lowrank_ops and its compiled extension lowrank_ops._C load, without the fallback warning;
  2. build_info(): CUDA sources compiled, for exactly the given arch list, and the version's local tag; and
     the extension's embedded GPU code (cuobjdump, e.g. the one in triton's package) holds a cubin for each
     architecture of every kernels/*.cu the wheel ships;
  3. dispatcher: every public op of torch.ops.lowrank_ops has a kernel for both CPU and CUDA and the
     extension compiled its C++ CPU function (_C.cpu.<op>), or is device-independent (only a composite
     kernel, no per-device one). On CUDA the op's kernel runs the compiled C++ CUDA function where the
     extension has one (_C.cuda.<op>), else Triton or the pure-torch kernel: the check lists which;
  4. CPU smoke: every public op runs on small CPU inputs and satisfies an identity that holds for
     any correct implementation (Random123's Philox known answers, P G against the materialized P, the DCT
     basis orthonormal, quantization round trips, the first Adam moment, an orthonormal range basis);
  5. fake kernels: the same calls on meta tensors trace, giving the shapes and dtypes of the CPU results.
Ops are listed from the installed package, so an op added without a smoke case here fails check 4.
Prints one line per check and exits 1 with the reasons when any fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import torch


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# ---------------------------------------------------------------------------------------------------------
# 1-3: import, build_info, dispatcher
# ---------------------------------------------------------------------------------------------------------


def import_installed():
    """lowrank_ops from this venv's site-packages, with its extension loaded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import lowrank_ops
    where = Path(lowrank_ops.__file__).resolve().parent
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    expect(site in where.parents, f"lowrank_ops was imported from {where}, not from the installed wheel in "
                                  f"{site}: run this script from outside the source tree")
    ours = [str(w.message) for w in caught if "lowrank_ops" in str(w.message)]
    expect(not ours, f"importing lowrank_ops warned: {ours}")
    return lowrank_ops


def check_build_info(lowrank_ops, arch_list: str, version_tag: str) -> dict:
    info = lowrank_ops.build_info()
    expect(info["extension"], f"the compiled extension did not load: {info['extension_error']}")
    expect(info["cuda_sources"], f"build_info() says no CUDA sources were compiled: {info}")
    expect(info["cuda_arch_list"] == arch_list,
           f"build_info() cuda_arch_list is {info['cuda_arch_list']!r}, expected {arch_list!r}")
    expect(info["version"].endswith("+" + version_tag),
           f"version {info['version']!r} does not carry the local tag +{version_tag}")
    return info


def cuobjdump() -> str | None:
    """cuobjdump from PATH, else the copy triton's NVIDIA backend ships (triton comes with CUDA torch)."""
    spec = importlib.util.find_spec("triton")
    shipped = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump" if spec else None
    return shutil.which("cuobjdump") or (str(shipped) if shipped and shipped.is_file() else None)


def check_cubins(lowrank_ops, arch_list: str) -> str:
    """Every shipped kernels/*.cu has a cubin per architecture in the extension: '9.0a' -> sm_90a."""
    tool = cuobjdump()
    if tool is None:
        return "not checked (no cuobjdump on PATH or in triton's package)"
    package = Path(lowrank_ops.__file__).parent
    library = next(package.glob("_C.*.so"))
    listing = subprocess.run([tool, "--list-elf", str(library)], capture_output=True, text=True, check=False)
    expect(listing.returncode == 0, f"{tool} --list-elf {library.name} failed: {listing.stderr.strip()}")
    found = set(re.findall(r"(\w+)\.(sm_\w+)\.cubin", listing.stdout))
    sms = {"sm_" + a.replace("+PTX", "").replace(".", "") for a in re.split(r"[;\s]+", arch_list) if a}
    sources = sorted(p.stem for p in (package / "_kernels").glob("*.cu"))
    expect(sources, f"the wheel ships no kernels/*.cu under {package / '_kernels'}")
    want = {(stem, sm) for stem in sources for sm in sms}
    expect(want <= found, f"{library.name} lacks cubins {sorted(want - found)}; it holds {sorted(found)}")
    return f"{len(found)} cubins ({', '.join(sorted(sms))} for {', '.join(sources)})"


def public_ops() -> list[str]:
    """The public ops of torch.ops.lowrank_ops, as the installed package registered them."""
    names = (n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("lowrank_ops::"))
    public = sorted(n for n in names if not n.startswith("_"))
    expect(public, "torch.ops.lowrank_ops has no ops (is lowrank_ops imported?)")
    variants = [n for n in public if n.rstrip("_").endswith("_triton")]
    expect(not variants, f"per-backend op variants exist: {variants} (one op per operation)")
    return public


def has_kernel(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"lowrank_ops::{name}", key)


def check_dispatcher(names: list[str]) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """(ops with CPU and CUDA kernels, device-independent ops, {what serves CUDA: ops} for the per-device
    ops: "C++" where the extension compiled a CUDA function, else "Triton" or "pure torch"). Fails for an op
    with a kernel for one device but not the other, without the compiled C++ CPU function, in a build
    without CUDA sources, or with no kernel at all."""
    from lowrank_ops import _extension
    from lowrank_ops._kernels import IMPLEMENTATIONS

    per_device, composite, bad = [], [], []
    served: dict[str, list[str]] = {"C++": [], "Triton": [], "pure torch": []}
    cuda_module = _extension.compiled("cuda")  # None in a build without CUDA sources
    for name in names:
        cpu = has_kernel(name, "CPU") and hasattr(_extension.compiled("cpu"), name)
        cuda = has_kernel(name, "CUDA") and cuda_module is not None
        if cpu and cuda:
            per_device.append(name)
            if hasattr(cuda_module, name):
                served["C++"].append(name)
            else:
                served["Triton" if "triton" in IMPLEMENTATIONS.get(name, ()) else "pure torch"].append(name)
        elif not cpu and not cuda and any(has_kernel(name, k) for k in ("CompositeExplicitAutograd",
                                                                         "CompositeImplicitAutograd")):
            composite.append(name)
        else:
            bad.append(f"{name} (CPU kernel: {cpu}, CUDA kernel: {cuda})")
    expect(not bad, "ops without a kernel for both CPU and CUDA: " + "; ".join(bad))
    expect(per_device, f"no op has CPU and CUDA kernels (ops: {names})")
    return per_device, composite, served


# ---------------------------------------------------------------------------------------------------------
# 4-5: smoke cases, run on CPU (with their identities) and on meta (shapes and dtypes only)
# ---------------------------------------------------------------------------------------------------------


def call(name: str, **kwargs):
    """torch.ops.lowrank_ops.<name> with the keyword arguments its schema names (a case may know arguments
    a schema has dropped); a required argument the case does not give is a failure naming the schema."""
    op = getattr(torch.ops.lowrank_ops, name).default
    arguments = op._schema.arguments
    missing = [a.name for a in arguments if a.name not in kwargs and not a.has_default_value()]
    expect(not missing, f"{name}: this check does not know the arguments {missing} of {op._schema}")
    return op(**{a.name: kwargs[a.name] for a in arguments if a.name in kwargs})


def close(got: torch.Tensor, want: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    """Relative Frobenius error at most `tol` (float32 results of small sums: ~1e-7 each)."""
    err = (got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)
    expect(bool(err <= tol), f"{what}: relative error {err:.3g} > {tol:g}")


def randn(*shape, device):
    return torch.randn(*shape, generator=GEN, dtype=torch.float32).to(device)


GEN = torch.Generator().manual_seed(14)
SEED = 0x5EED_1234_ABCD  # a seed above 2^32: both Philox key words in use

# Random123's known-answer vectors for Philox4x32-10: (counter words, key = seed) -> output words.
PHILOX_KAT = [
    ((0, 0, 0, 0), 0, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, -1, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), 0x299F31D0A4093822,
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def case_philox4x32(device):
    outs = [call("philox4x32", counters=torch.tensor([c], dtype=torch.int64, device=device), seed=seed, rounds=10)
            for c, seed, _ in PHILOX_KAT]

    def verify():
        for out, (_, seed, want) in zip(outs, PHILOX_KAT):
            expect(out.flatten().tolist() == list(want), f"philox4x32 seed {seed:#x}: {out.tolist()} != {want}")
    return outs, verify


def sketch_matrix(rows: int, cols: int, kind: str, device) -> torch.Tensor:
    out = torch.empty(rows, cols, device=device)
    call("sketch_fill_", out=out, seed=SEED, kind=kind)
    return out


def case_sketch_fill_(device):
    P = sketch_matrix(5, 9, "rademacher", device)

    def verify():
        expect(bool(torch.all(P.abs() == torch.tensor(1 / math.sqrt(9), dtype=P.dtype))),
               "sketch_fill_ rademacher: entries are not +-1/sqrt(cols)")
        expect(0 < int((P > 0).sum()) < P.numel(), "sketch_fill_ rademacher: all entries have one sign")
    return [P], verify


def case_sketch_project(device):
    G = randn(13, 7, device=device)
    out = call("sketch_project", G=G, seed=SEED, rank=4, kind="gaussian", side="left", out_dtype=None)
    return [out], lambda: close(out, sketch_matrix(4, 13, "gaussian", device) @ G, "sketch_project vs P G")


def case_sketch_unproject(device):
    R = randn(7, 4, device=device)
    out = call("sketch_unproject", R=R, seed=SEED, dim=11, kind="rademacher", side="right", out_dtype=None)
    return [out], lambda: close(out, R @ sketch_matrix(4, 11, "rademacher", device), "sketch_unproject vs R P")


def dct_matrix(dim: int, device) -> torch.Tensor:
    return call("dct_basis", indices=torch.arange(dim, device=device), dim=dim, dtype=torch.float32)


def case_dct_basis(device):
    D = dct_matrix(12, device)
    return [D], lambda: close(D @ D.T, torch.eye(12), "dct_basis: D D^T vs I")


def case_dct_project(device):
    G, indices = randn(12, 5, device=device), torch.tensor([1, 3, 4], device=device)
    signs = torch.tensor([1.0, -1.0] * 6, device=device)
    out = call("dct_project", G=G, indices=indices, side="left", signs=signs, method="auto")
    return [out], lambda: close(out, (dct_matrix(12, device)[[1, 3, 4]] * signs) @ G, "dct_project vs (D S) G")


def case_dct_unproject(device):
    R, indices = randn(7, 3, device=device), torch.tensor([0, 2, 9], device=device)
    out = call("dct_unproject", R=R, indices=indices, dim=10, side="right", signs=None, method="auto")
    return [out], lambda: close(out, R @ dct_matrix(10, device)[[0, 2, 9]], "dct_unproject vs R P")


def case_dct_scores(device):
    G = randn(12, 5, device=device)
    scores = call("dct_scores", G=G, side="left", norm="l1", method="auto")
    return [scores], lambda: close(scores, (dct_matrix(12, device) @ G).abs().sum(1), "dct_scores vs |D G| row sums")


def case_dct_topk(device):
    G = randn(6, 10, device=device)
    top = call("dct_topk", G=G, rank=3, side="right", norm="l2", method="auto")

    def verify():
        scores = (G @ dct_matrix(10, device).T).norm(dim=0)
        want = torch.sort(torch.topk(scores, 3).indices).values.to(torch.int32)
        expect(torch.equal(top, want), f"dct_topk: {top.tolist()} != the 3 best of {scores.tolist()}")
    return [top], verify


def quantized(fmt: str, device, rows: int = 6, cols: int = 10, group: int = 4):
    W = randn(rows, cols, device=device)
    codes, scales = call("quantize_weight", W=W, format=fmt, group_size=group)
    return W, codes, scales, {"codes": codes, "scales": scales, "format": fmt, "group_size": group,
                              "rows": rows, "cols": cols}


def dequantized(q: dict) -> torch.Tensor:
    return call("dequantize_weight", **q, dtype=torch.float32)


def case_quantize_weight(device):
    outs, checks = [], []
    for fmt, tol in (("int8", 0.01), ("nf4", 0.15)):  # round-trip error: absmax/254 per value; NF4's 16 levels
        W, codes, scales, q = quantized(fmt, device)
        outs += [codes, scales]
        checks.append((W, q, fmt, tol))

    def verify():
        for W, q, fmt, tol in checks:
            close(dequantized(q), W, f"dequantize(quantize(W)) in {fmt}", tol)
    return outs, verify


def case_dequantize_weight(device):
    W, _, _, q = quantized("int8", device)
    deq = dequantized(q)
    return [deq], lambda: close(deq, W, "dequantize_weight (int8) vs W", 0.01)


def case_dequant_matmul(device):
    _, _, _, q = quantized("nf4", device, rows=8, cols=16, group=8)
    X, bias = randn(5, 16, device=device), randn(8, device=device)
    Y = call("dequant_matmul", X=X, **q, bias=bias)
    return [Y], lambda: close(Y, X @ dequantized(q).T + bias, "dequant_matmul vs X deq(W)^T + b")


def case_dequant_matmul_t(device):
    _, _, _, q = quantized("int8", device)
    dY = randn(5, 6, device=device)
    dX = call("dequant_matmul_t", dY=dY, **q)
    return [dX], lambda: close(dX, dY @ dequantized(q), "dequant_matmul_t vs dY deq(W)")


def case_lowrank_adamw_step_(device):
    """Step 1 from zero moments, left side a rank-3 Rademacher sketch: exp_avg = (1 - beta1) P G."""
    W, G = randn(9, 6, device=device), randn(9, 6, device=device)
    W0 = W.clone()
    m, v = torch.zeros(3, 6, device=device), torch.zeros(3, 6, device=device)
    call("lowrank_adamw_step_", W=W, G=G, exp_avg=m, exp_avg_sq=v, delta=None,
         left_kind="rademacher", left_seed=SEED, left_rank=3, left_matrix=None,
         right_kind="none", right_seed=0, right_rank=0, right_matrix=None,
         lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1, scale=1.0, wd_mode="full")

    def verify():
        close(m, 0.1 * (sketch_matrix(3, 9, "rademacher", device) @ G), "lowrank_adamw_step_ exp_avg vs (1-b1) P G")
        expect(bool(torch.isfinite(W).all()) and not torch.equal(W, W0), "lowrank_adamw_step_: W not updated")
    return [W, m, v], verify


def case_lowrank_apollo_step_(device):
    """Step 1 from zero moments, left side a rank-3 Rademacher sketch scaled by c = 2: exp_avg = (1 - beta1) c P G,
    the limiter's norm is then set (> 0) and W moves."""
    W, G = randn(9, 6, device=device), randn(9, 6, device=device)
    W0 = W.clone()
    m, v, norm = torch.zeros(3, 6, device=device), torch.zeros(3, 6, device=device), torch.zeros((), device=device)
    call("lowrank_apollo_step_", W=W, G=G, exp_avg=m, exp_avg_sq=v, limiter_norm=norm, side="left", kind="rademacher",
         seed=SEED, rank=3, matrix=None, proj_scale=2.0, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
         step=1, scale=1.0, scale_type="channel", limiter=True, correct_bias=True)

    def verify():
        close(m, 0.2 * (sketch_matrix(3, 9, "rademacher", device) @ G), "lowrank_apollo_step_ exp_avg vs (1-b1) c P G")
        expect(bool(norm > 0), "lowrank_apollo_step_: the limiter's norm not set")
        expect(bool(torch.isfinite(W).all()) and not torch.equal(W, W0), "lowrank_apollo_step_: W not updated")
    return [W, m, v, norm], verify


def case_lowrank_apollo_multi_step_(device):
    """Two matrices in one call, step 1 from zero moments: a left rank-3 Rademacher sketch scaled by c = 2
    (exp_avg = (1 - beta1) c P G) and a right explicit rank-2 P (exp_avg = (1 - beta1) G P^T); both limiter
    norms are set and both W move."""
    W, G = [randn(9, 6, device=device), randn(5, 8, device=device)], [randn(9, 6, device=device),
                                                                        randn(5, 8, device=device)]
    W0 = [w.clone() for w in W]
    P = randn(2, 8, device=device)
    m = [torch.zeros(3, 6, device=device), torch.zeros(5, 2, device=device)]
    v = [torch.zeros_like(x) for x in m]
    norms = [torch.zeros((), device=device), torch.zeros((), device=device)]
    call("lowrank_apollo_multi_step_", W=W, G=G, exp_avg=m, exp_avg_sq=v, limiter_norm=norms, side=["left", "right"],
         kind=["rademacher", "matrix"], seed=[SEED, 0], rank=[3, 2], matrix=[None, P], proj_scale=[2.0, 1.0],
         lr=[1e-2] * 2, beta1=[0.9] * 2, beta2=[0.999] * 2, eps=[1e-8] * 2, weight_decay=[0.0] * 2, step=[1, 1],
         scale=[1.0] * 2, scale_type=["channel", "tensor"], limiter=[True, True], correct_bias=[True, True])

    def verify():
        close(m[0], 0.2 * (sketch_matrix(3, 9, "rademacher", device) @ G[0]), "lowrank_apollo_multi_step_ exp_avg[0]")
        close(m[1], 0.1 * (G[1] @ P.T), "lowrank_apollo_multi_step_ exp_avg[1]")
        expect(all(bool(n > 0) for n in norms), "lowrank_apollo_multi_step_: a limiter norm not set")
        expect(all(bool(torch.isfinite(w).all()) and not torch.equal(w, w0) for w, w0 in zip(W, W0)),
               "lowrank_apollo_multi_step_: W not updated")
    return [*W, *m, *v, *norms], verify


def case_lowrank_adamw_multi_step_(device):
    """Two matrices in one call, step 1 from zero moments: a left rank-3 Rademacher sketch (exp_avg = (1 - beta1)
    P G) and a right rank-2 Gaussian one (exp_avg = (1 - beta1) G P^T)."""
    W, G = [randn(9, 6, device=device), randn(5, 8, device=device)], [randn(9, 6, device=device),
                                                                        randn(5, 8, device=device)]
    W0 = [w.clone() for w in W]
    m = [torch.zeros(3, 6, device=device), torch.zeros(5, 2, device=device)]
    v = [torch.zeros_like(x) for x in m]
    call("lowrank_adamw_multi_step_", W=W, G=G, exp_avg=m, exp_avg_sq=v, delta=[],
         left_kind=["rademacher", "none"], left_seed=[SEED, 0], left_rank=[3, 0], left_matrix=[None, None],
         right_kind=["none", "gaussian"], right_seed=[0, SEED], right_rank=[0, 2], right_matrix=[None, None],
         lr=[1e-2] * 2, beta1=[0.9] * 2, beta2=[0.999] * 2, eps=[1e-8] * 2, weight_decay=[0.0] * 2, step=[1, 1],
         scale=[1.0] * 2, wd_mode=["full"] * 2)

    def verify():
        close(m[0], 0.1 * (sketch_matrix(3, 9, "rademacher", device) @ G[0]), "lowrank_adamw_multi_step_ exp_avg[0]")
        close(m[1], 0.1 * (G[1] @ sketch_matrix(2, 8, "gaussian", device).T), "lowrank_adamw_multi_step_ exp_avg[1]")
        expect(all(bool(torch.isfinite(w).all()) and not torch.equal(w, w0) for w, w0 in zip(W, W0)),
               "lowrank_adamw_multi_step_: W not updated")
    return [*W, *m, *v], verify


def case_range_finder(device):
    G = randn(12, 8, device=device)
    Q, S, sqnorm, fallbacks = call("range_finder", G=G, rank=3, oversample=2, power_iters=1, seed=SEED,
                                   side="left", backend="cpu")

    def verify():
        close(Q.T @ Q, torch.eye(3), "range_finder: Q^T Q vs I")
        expect(bool(torch.all(S[:-1] >= S[1:])) and bool(S[0] <= torch.linalg.matrix_norm(G, 2) * (1 + 1e-5)),
               f"range_finder: S {S.tolist()} not descending or above sigma_1(G)")
        close(sqnorm, G.double().square().sum(), "range_finder: squared norm")
    return [Q, S, sqnorm, fallbacks], verify


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


def signature(tensors) -> list[tuple]:
    return [(tuple(t.shape), t.dtype) for t in tensors]


def check_ops(names: list[str]) -> None:
    """Checks 4 and 5 for every op: a smoke case on CPU with its identity, then on meta tensors."""
    missing = [n for n in names if n not in CASES]
    expect(not missing, f"ops without a smoke case in {Path(__file__).name}: {missing}")
    failures = []
    for name in names:
        try:
            outs, verify = CASES[name]("cpu")
            expect(all(bool(torch.isfinite(t).all()) for t in outs if t.is_floating_point()),
                   f"{name}: non-finite output on CPU")
            verify()
            meta, _ = CASES[name]("meta")
            expect(signature(meta) == signature(outs),
                   f"{name}: meta (fake kernel) gives {signature(meta)}, CPU gives {signature(outs)}")
            expect(all(t.device.type == "meta" for t in meta), f"{name}: meta call returned non-meta tensors")
        except Exception as error:  # noqa: BLE001  (every op is tried; the report lists all that failed)
            failures.append(f"{name}: {type(error).__name__}: {error}")
    expect(not failures, "\n  ".join(["smoke/meta failures:"] + failures))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuda-arch-list", required=True, help='the arch list the wheel was built for, e.g. "8.0;9.0a"')
    ap.add_argument("--version-tag", required=True, help="the expected local version tag, e.g. cu130torch2.14")
    args = ap.parse_args(argv)
    try:
        lowrank_ops = import_installed()
        print(f"import: lowrank_ops {lowrank_ops.__version__} from {Path(lowrank_ops.__file__).parent}")
        info = check_build_info(lowrank_ops, args.cuda_arch_list, args.version_tag)
        print(f"build_info: CUDA sources for {info['cuda_arch_list']!r}, built with torch "
              f"{info['built_with_torch']} / CUDA {info['built_with_cuda']} (toolkit {info['cuda_toolkit']}), "
              f"C++{info['cxx_standard']}; running torch {info['torch']}, GPU visible: {torch.cuda.is_available()}")
        print(f"cubins: {check_cubins(lowrank_ops, args.cuda_arch_list)}")
        names = public_ops()
        per_device, composite, served = check_dispatcher(names)
        print(f"dispatcher: CPU and CUDA kernels for {len(per_device)} ops ({', '.join(per_device)})"
              + (f"; device-independent: {', '.join(composite)}" if composite else ""))
        print("dispatcher: on CUDA, " + "; ".join(f"{how}: {', '.join(ops) or '-'}" for how, ops in served.items()))
        check_ops(names)
        print(f"smoke: {len(names)} ops pass on CPU and trace on meta tensors")
    except CheckFailed as failure:
        print(f"check_wheel: FAILED: {failure}", file=sys.stderr)
        return 1
    print("check_wheel: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

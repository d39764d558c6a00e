"""Paired timing of the Triton attention launchers against those of another git revision, in one process.

The other revision's ``kernels/triton_kernels.py`` is written to a temporary file and imported as a second module
(it imports nothing from the package), so both versions run on the same GPU, in turns (A, B, A, B, ...), with
``triton.testing.do_bench`` back to back: the comparison a kernel change needs, free of the 10-15 % spread between
machines of the same kind. Both versions' outputs and gradients are compared before timing.

Usage (GPU machine, repository root)::

    python benchmarks/ab_rev.py --rev HEAD                    # the working tree against the last commit
    python benchmarks/ab_rev.py --rev 47fc5f4 --shapes 64x8192x2x12 --rounds 5
    python benchmarks/ab_rev.py --rev HEAD --features plain,gate-head,gate-elem,softmax   # gated / softmax passes too
    git show 47fc5f4:kernels/triton_kernels.py > .gdata/old_tk.py   # here; then on the GPU machine (no history):
    python benchmarks/ab_rev.py --rev .gdata/old_tk.py
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# D x N x B x H: the TritonSigmoid shapes (16,384 tokens, hidden 2048) and scfm_large's attention
SHAPES = "128x16384x1x16,128x4096x4x16,128x1024x16x16,64x16384x1x32,64x1024x16x32,64x8192x2x12"


def load_revision(rev: str, tmp: Path):
    """The ``kernels/triton_kernels.py`` of git revision ``rev`` (or the file at path ``rev``: the GPU machine's copy
    of the checkout has no git history), imported as a module of its own."""
    if Path(rev).is_file():
        spec = importlib.util.spec_from_file_location(f"triton_kernels_{Path(rev).stem}", rev)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        src = subprocess.run(["git", "show", f"{rev}:kernels/triton_kernels.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"ab_rev: git could not show kernels/triton_kernels.py at {rev!r}: {e.stderr.strip()}. "
                         "Pass a commit of this repository (the device copy has its history).") from e
    path = tmp / f"triton_kernels_{rev.replace('~', '_').replace('^', '_')}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """``"DxNxBxH,..."`` -> ``[(D, N, B, H), ...]``, refused with the expected form when malformed."""
    out = []
    for item in text.split(","):
        parts = item.strip().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"ab_rev: shape {item!r} is not DxNxBxH of positive integers (e.g. 64x8192x2x12).")
        out.append(tuple(int(p) for p in parts))
    return out


# the variants --features can time: (activation, gate); "plain" is the sigmoid kernel with bias -log N
FEATURES = {"plain": ("sigmoid", None), "gate-head": ("sigmoid", "headwise"), "gate-elem": ("sigmoid", "elementwise"),
            "softmax": ("softmax", None)}


def parse_features(text: str) -> list[str]:
    """``"plain,gate-elem"`` -> names of :data:`FEATURES`, refused with the valid names when unknown."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FEATURES]
    if bad or not names:
        raise SystemExit(f"ab_rev: unknown --features {bad or text!r}; choose from {', '.join(FEATURES)}.")
    return names


def _calls(mod, q, k, v, do, lens, bias_value, feature="plain"):
    activation, gate_kind = FEATURES[feature]
    gate = None
    if gate_kind is not None:
        shape = q.shape[:-1] if gate_kind == "headwise" else q.shape
        gate = torch.randn(shape, device=q.device, dtype=q.dtype, generator=torch.Generator(q.device).manual_seed(1))
    bias_value = bias_value if activation == "sigmoid" else None
    args = (gate, None, None, None, None, lens, None, activation, 1.0 / math.sqrt(q.shape[-1]), bias_value,
            "additive", False, 0)
    out, lse = mod.attention_forward(q, k, v, *args)

    def fwd():
        return mod.attention_forward(q, k, v, *args)

    def bwd():
        return mod.attention_backward(do, q, k, v, out, lse, *args, False, False, False)
    return fwd, bwd


def compare(new, old, shapes, rounds: int, features=("plain",)) -> list[dict]:
    import triton

    rows = []
    for (D, N, B, H), feature in ((s, f) for s in shapes for f in features):
        q, k, v, do = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        lens = torch.full((B,), N, dtype=torch.int32, device="cuda")
        bias = -math.log(N)
        flops = 4.0 * B * H * N * N * D
        calls = {"new": _calls(new, q, k, v, do, lens, bias, feature),
                 "old": _calls(old, q, k, v, do, lens, bias, feature)}
        for i, which in enumerate(("fwd", "bwd")):
            a, b = calls["old"][i](), calls["new"][i]()
            a = a if isinstance(a, (tuple, list)) else (a,)
            b = b if isinstance(b, (tuple, list)) else (b,)
            # out (forward); dq, dk, dv, dgate (backward)
            err = max(float((x.float() - y.float()).abs().max()) / max(float(x.float().abs().max()), 1e-6)
                      for x, y in zip(a[:4], b[:4]) if x is not None and x.numel() > 1)
            got = {"old": [], "new": []}
            for _ in range(rounds):
                for name in ("old", "new"):
                    got[name].append(triton.testing.do_bench(calls[name][i], warmup=25, rep=200))
            med = {name: sorted(ms)[len(ms) // 2] for name, ms in got.items()}
            f = flops * (2.5 if which == "bwd" else 1.0)
            row = {"D": D, "N": N, "B": B, "H": H, "feature": feature, "pass": which, "old_ms": med["old"],
                   "new_ms": med["new"],
                   "old_tflops": f / med["old"] / 1e9, "new_tflops": f / med["new"] / 1e9,
                   "time_ratio": med["new"] / med["old"], "max_rel_diff": err}
            rows.append(row)
            print(f"D={D:3d} N={N:5d} B={B:2d} H={H:2d} {feature:9s} {which}: old {row['old_tflops']:6.1f} new "
                  f"{row['new_tflops']:6.1f} TFLOPS  time new/old {row['time_ratio']:.3f}  "
                  f"(max |new - old| / max |old| {err:.1e})", flush=True)
        del q, k, v, do, calls
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", default="HEAD", help="git revision (or a triton_kernels.py file) to compare against")
    p.add_argument("--shapes", default=SHAPES, help="comma-separated DxNxBxH (sigmoid, bias -log N, bf16)")
    p.add_argument("--features", default="plain", help=f"comma-separated variants of each shape: {', '.join(FEATURES)}")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, help="also write the rows, device and versions to this JSON file")
    args = p.parse_args(argv)
    shapes = parse_shapes(args.shapes)
    features = parse_features(args.features)
    if not torch.cuda.is_available():
        raise SystemExit("ab_rev: needs a CUDA GPU (it times the Triton kernels).")
    sys.path.insert(0, str(ROOT))
    from gatedzoo.kernels import triton_kernels as new

    with tempfile.TemporaryDirectory() as tmp:
        old = load_revision(args.rev, Path(tmp))
        rows = compare(new, old, shapes, args.rounds, features)
    if args.out:
        import json
        import time

        import triton
        info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "old": args.rev, "rounds": args.rounds,
                "features": features, "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Side by side: maskpos and an independent PyTorch implementation of the same Monte Carlo simulation.

Runs, in one invocation and on the same thread count:
  1. the machine's single-precision matrix-product rate on the same thread count (build/bin/sgemm_rate:
     Eigen GEMM, one 1024^3 product per thread; torch.mm is printed too, but Debian's torch links the
     generic reference BLAS and is far slower),
  2. the maskpos command (default: build/bin/mc_paper; e.g. --maskpos-cmd "build/bin/maskpos simulate --quiet ..."),
  3. the PyTorch simulation below (written from the paper's equations, not from maskpos),
each of 2 and 3 as a child process under GNU time, so wall time and peak resident memory are measured
from outside the process. Prints both, their ratios, and the useful GFLOP/s (the causal halves of Y Y^T and
of A Y: 2 S^2 d flops per layer and sequence) against the measured matrix-product rate.

The paper (arXiv 2509.21042), one parameter-free layer, rows of X are tokens:
    Y = norm(X),  S = c Q K^T with Q = K = RoPE(Y) or Y,  A = softmax(causal(S)),  X <- A Y + X
Inputs: x_i = normalize(z_i + lambda c), z_i, c ~ N(0, I_d), lambda = sqrt(alpha / (1 - alpha)).

Requires the Debian packages python3-torch and time (scripts/install-deps --bench). Run with /usr/bin/python3.
Example (the paper's configuration):
    /usr/bin/python3 bench/vs_pytorch.py --samples 100000 --threads 2
"""
import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=100000, help="B, sequences per run (default 100000)")
    p.add_argument("--seq-len", type=int, default=50)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--norm", choices=["l2", "layernorm"], default="l2")
    p.add_argument("--scale", default="1", help="score scale: 1, sqrt-d or d")
    p.add_argument("--rope", type=float, default=0.0, help="RoPE base theta (0: no RoPE)")
    p.add_argument("--alpha", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--torch-batch", type=int, default=10000,
                   help="sequences PyTorch holds at once (the whole B at once needs up to 8 GB)")
    p.add_argument("--maskpos-cmd", default=None,
                   help="the maskpos command line to time (default: build/bin/mc_paper with these options)")
    p.add_argument("--skip-torch", action="store_true", help="time maskpos only")
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def score_scale(name, d):
    return {"1": 1.0, "sqrt-d": 1.0 / math.sqrt(d), "d": 1.0 / d}.get(name) or float(name)


def torch_simulation(args):
    """The PyTorch side: streamed batches, float32 compute, float64 sums. Returns layer-L statistics."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    S, d, L = args.seq_len, args.dim, args.layers
    c = score_scale(args.scale, d)
    lam = math.sqrt(args.alpha / (1.0 - args.alpha))
    causal = torch.ones(S, S, dtype=torch.bool).triu(1)
    if args.rope > 0:
        half = d // 2
        inv_freq = args.rope ** (-torch.arange(half, dtype=torch.float64) * 2.0 / d)
        angle = torch.arange(S, dtype=torch.float64)[:, None] * inv_freq[None, :]
        cos, sin = angle.cos().float(), angle.sin().float()

        def rope(y):  # Llama / NeoX rotate-half
            a, b = y[..., :half], y[..., half:]
            return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    sums = [torch.zeros(S, S, dtype=torch.float64) for _ in range(L)]
    squares = [torch.zeros(S, S, dtype=torch.float64) for _ in range(L)]
    with torch.no_grad():
        done = 0
        while done < args.samples:
            b = min(args.torch_batch, args.samples - done)
            shared = torch.randn(b, 1, d)
            x = F.normalize(torch.randn(b, S, d) + lam * shared, dim=-1)
            for layer in range(L):
                if args.norm == "l2":
                    y = F.normalize(x, dim=-1)
                else:
                    y = F.layer_norm(x, (d,), eps=1e-12)
                q = rope(y) if args.rope > 0 else y
                scores = c * (q @ q.transpose(1, 2))
                probs = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
                if layer + 1 < L:
                    x = probs @ y + x
                s = scores.masked_fill(causal, 0.0).double()
                sums[layer] += s.sum(0)
                squares[layer] += (s * s).sum(0)
            done += b
    B = float(args.samples)
    mean = sums[L - 1] / B
    var = (squares[L - 1] / B - mean * mean).clamp(min=0) * B / (B - 1)
    return {"mean_last_first": float(mean[S - 1, 0]), "stderr_last_first": math.sqrt(float(var[S - 1, 0]) / B),
            "mean_last_prev": float(mean[S - 1, S - 2])}


def eigen_sgemm_rate(binary, threads):
    """GFLOP/s of build/bin/sgemm_rate on `threads` threads (None when it is not built)."""
    if not os.path.exists(binary):
        return None
    done = subprocess.run([binary, "--threads", str(threads)], stdout=subprocess.PIPE, text=True, check=True)
    return float(done.stdout.strip())


def torch_sgemm_rate(threads, n=2048, repeats=5):
    """torch.mm float32 rate on `threads` threads (best of `repeats`), GFLOP/s."""
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best * 1e-9


def run_timed(command, env=None):
    """Runs `command` under GNU time -v: returns (wall seconds, peak RSS MB, stdout)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        full = ["/usr/bin/time", "-v", "-o", report.name] + command
        done = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"vs_pytorch: {' '.join(map(shlex.quote, command))} failed:\n{done.stderr}")
        text = report.read()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", text)
    seconds = float(wall.group(1) or 0) * 3600 + float(wall.group(2)) * 60 + float(wall.group(3))
    rss_kb = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return seconds, rss_kb / 1024.0, done.stdout


def main(argv):
    args = parse_args(argv)
    if args.torch_worker:
        print(json.dumps(torch_simulation(args)))
        return
    if not os.path.exists("/usr/bin/time"):
        sys.exit("vs_pytorch: GNU time is missing (apt-get install time, or scripts/install-deps --bench)")
    here = os.path.dirname(os.path.abspath(__file__))
    bin_dir = os.path.join(os.path.dirname(here), "build", "bin")
    if args.maskpos_cmd is None:
        binary = os.path.join(bin_dir, "mc_paper")
        command = [binary, "--samples", str(args.samples), "--seq-len", str(args.seq_len), "--dim", str(args.dim),
                   "--layers", str(args.layers), "--norm", args.norm, "--scale", args.scale, "--alpha", str(args.alpha),
                   "--threads", str(args.threads)]
        if args.rope > 0:
            command += ["--rope", str(args.rope)]
    else:
        command = shlex.split(args.maskpos_cmd)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))

    flops = 2.0 * args.seq_len ** 2 * args.dim * args.layers * args.samples
    torch_rate = torch_sgemm_rate(args.threads)
    rate = eigen_sgemm_rate(os.path.join(bin_dir, "sgemm_rate"), args.threads) or torch_rate
    print(f"configuration: B={args.samples} S={args.seq_len} d={args.dim} L={args.layers} norm={args.norm} "
          f"scale={args.scale} rope={args.rope or 'none'} alpha={args.alpha} threads={args.threads}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"measured SGEMM rate (build/bin/sgemm_rate, Eigen, {args.threads} threads): {rate:.1f} GFLOP/s; "
          f"torch.mm 2048^3 float32: {torch_rate:.1f} GFLOP/s")
    print(f"useful work: {flops:.3e} flop (2 S^2 d per layer and sequence)")
    print(f"maskpos command: {' '.join(map(shlex.quote, command))}")
    m_wall, m_rss, m_out = run_timed(command, env)
    rows = [("maskpos", m_wall, m_rss)]
    torch_stats = None
    if not args.skip_torch:
        worker = [sys.executable, os.path.abspath(__file__), "--torch-worker"] + [a for a in argv if a != "--torch-worker"]
        t_wall, t_rss, t_out = run_timed(worker, env)
        torch_stats = json.loads(t_out.strip().splitlines()[-1])
        rows.append(("pytorch", t_wall, t_rss))
    print()
    print(f"{'':10s} {'wall s':>9s} {'peak MB':>9s} {'useful GFLOP/s':>15s} {'% of SGEMM':>11s}")
    for name, wall, rss in rows:
        gflops = flops / wall * 1e-9
        print(f"{name:10s} {wall:9.2f} {rss:9.1f} {gflops:15.1f} {100 * gflops / rate:10.0f}%")
    if torch_stats is not None:
        print(f"{'ratio':10s} {rows[1][1] / m_wall:8.1f}x {rows[1][2] / m_rss:8.1f}x   (pytorch / maskpos)")
        print(f"pytorch layer {args.layers} mean score (S-1, 0) = {torch_stats['mean_last_first']:.5f} "
              f"+- {torch_stats['stderr_last_first']:.5f}, (S-1, S-2) = {torch_stats['mean_last_prev']:.5f}")
        found = re.search(r"mean score \(S-1, 0\) = ([\d.eE+-]+) \+- ([\d.eE+-]+), \(S-1, S-2\) = ([\d.eE+-]+)", m_out)
        if found:
            a, sa, prev = (float(v) for v in found.groups())
            z = (a - torch_stats["mean_last_first"]) / math.hypot(sa, torch_stats["stderr_last_first"])
            print(f"maskpos layer {args.layers} mean score (S-1, 0) = {a:.5f} +- {sa:.5f}, (S-1, S-2) = {prev:.5f}; "
                  f"difference {z:+.1f} combined standard errors")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env python3
"""An independent implementation of the paper's parameter-free decoder in NumPy, written from
NOTES Sec. 2-3 (no maskpos code), used to check `maskpos simulate` within Monte Carlo error.

It draws its own Gaussian inputs (NumPy's generator, not Philox), so the two means differ only by
sampling noise: for every visible entry z = (mean_maskpos - mean_numpy) / sqrt(se_m^2 + se_n^2) is
approximately N(0, 1). With n entries compared, max |z| exceeds sqrt(2 ln(2 n / 1e-4)) (about 5.1 for
n = 500) with probability below 1e-4 under that null; a wrong model (for example a missing residual,
a wrong norm or a wrong mask) moves many entries by tens of standard errors.

Usage: independent_numpy.py MASKPOS_EXECUTABLE WORK_DIR  (exit 0 pass, 1 fail, 77 skipped: no NumPy)
"""
import json
import math
import os
import shutil
import subprocess
import sys

try:
    import numpy as np
except ImportError:  # CTest marks exit code 77 as skipped
    print("NumPy is not available: skipped")
    sys.exit(77)


def normalize(x, norm, eps=1e-12):
    if norm == "l2":
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    if norm == "layernorm":
        centred = x - x.mean(axis=-1, keepdims=True)
        return centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + eps)
    if norm == "rmsnorm":
        return x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + eps)
    return x


def rope(y, theta):
    """Half-split RoPE with rotary dim d, positions 0..S-1 (NOTES Sec. 2)."""
    S, d = y.shape[-2], y.shape[-1]
    half = d // 2
    freq = theta ** (-2.0 * np.arange(half) / d)
    phi = np.arange(S)[:, None] * freq[None, :]
    a, b = y[..., :half], y[..., half:]
    return np.concatenate([a * np.cos(phi) - b * np.sin(phi), b * np.cos(phi) + a * np.sin(phi)], axis=-1)


def simulate(B, S, d, layers, alpha, norm, scale, causal, use_rope, seed, batch=2000):
    rng = np.random.default_rng(seed)
    lam = math.sqrt(alpha / (1 - alpha))
    visible = np.tril(np.ones((S, S), bool)) if causal else np.ones((S, S), bool)
    total = np.zeros((layers, S, S))
    squares = np.zeros((layers, S, S))
    done = 0
    while done < B:
        n = min(batch, B - done)
        z = rng.standard_normal((n, S, d))
        c = rng.standard_normal((n, 1, d))
        x = normalize(z + lam * c, "l2")
        for layer in range(layers):
            y = normalize(x, norm)
            q = rope(y, 10000.0) if use_rope else y
            s = scale * np.einsum("bik,bjk->bij", q, q)
            total[layer] += s.sum(axis=0)
            squares[layer] += (s ** 2).sum(axis=0)
            masked = np.where(visible, s, -np.inf)
            p = np.exp(masked - masked.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            x = np.einsum("bij,bjk->bik", p, y) + x
        done += n
    mean = total / B
    se = np.sqrt(np.maximum(squares / B - mean ** 2, 0) / (B - 1))
    return mean, se, visible


def main():
    executable, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    cases = [
        dict(name="l2_alpha02", args=["--alpha", "0.2"], norm="l2", scale=1.0, alpha=0.2, causal=True, rope=False),
        dict(name="layernorm_d", args=["--norm", "layernorm", "--score-scale", "d"], norm="layernorm",
             scale=1.0 / 32, alpha=0.0, causal=True, rope=False),
        dict(name="rope_alpha05", args=["--rope", "--alpha", "0.5"], norm="l2", scale=1.0, alpha=0.5, causal=True,
             rope=True),
        dict(name="bidirectional", args=["--mask", "bidirectional", "--alpha", "0.3"], norm="l2", scale=1.0,
             alpha=0.3, causal=False, rope=False),
    ]
    B, S, d, layers = 6000, 12, 32, 3
    failed = False
    for case in cases:
        out = os.path.join(work, case["name"])
        shutil.rmtree(out, ignore_errors=True)
        command = [executable, "simulate", "--seq-len", str(S), "--dim", str(d), "--layers", str(layers),
                   "--samples", str(B), "--seed", "11", "--quiet", "--no-figure", "--out", out] + case["args"]
        subprocess.run(command, check=True)
        mean, se, visible = simulate(B, S, d, layers, case["alpha"], case["norm"], case["scale"], case["causal"],
                                     case["rope"], seed=12345)
        off_diagonal = visible & ~np.eye(S, dtype=bool)
        n = layers * int(off_diagonal.sum())
        threshold = math.sqrt(2 * math.log(2 * n / 1e-4))
        worst = 0.0
        for layer in range(layers):
            m = np.load(os.path.join(out, f"scores_layer{layer + 1}.npy"))
            e = np.load(os.path.join(out, f"stderr_layer{layer + 1}.npy"))
            if not np.array_equal(np.isnan(m), ~visible):
                print(f"{case['name']}: layer {layer + 1}: masked entries are not exactly the NaN entries")
                failed = True
            z = (m - mean[layer])[off_diagonal] / np.sqrt(e[off_diagonal] ** 2 + se[layer][off_diagonal] ** 2)
            worst = max(worst, float(np.abs(z).max()))
            # The diagonal of L2 scores is exactly the scale (unit rows): compare directly.
            if case["norm"] == "l2" and not np.allclose(np.diag(m), case["scale"], atol=1e-6):
                print(f"{case['name']}: layer {layer + 1}: diagonal is not the scale")
                failed = True
        verdict = "ok" if worst < threshold else "FAIL"
        print(f"{case['name']}: max |z| = {worst:.2f} over {n} entries (threshold {threshold:.2f}) {verdict}")
        failed |= worst >= threshold
        shutil.rmtree(out, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

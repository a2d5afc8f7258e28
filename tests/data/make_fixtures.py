#!/usr/bin/python3
"""Generates the committed .npy fixtures of tests/test_npy.cpp and tests/test_analysis.cpp with NumPy.

Run with the system interpreter (NumPy lives there): /usr/bin/python3 tests/data/make_fixtures.py
Every value follows a closed form that the C++ tests recompute independently:
  2-D: a[i, j] = 10 i + j + 0.25, NaN above the diagonal (j > i), a[1, 0] = 0.1 (inexact in float32)
  3-D: a[k, i, j] = 100 k + 10 i + j + 0.5, a[k, 0, 2] = NaN
  1-D: a[i] = i - 1.5, a[2] = NaN
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def matrix_2d(rows, cols):
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    a = 10.0 * i + j + 0.25
    a[j > i] = np.nan
    a[1, 0] = 0.1
    return a


def stack_3d(n, rows, cols):
    k, i, j = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    a = 100.0 * k + 10.0 * i + j + 0.5
    a[:, 0, 2] = np.nan
    return a


def save(name, array):
    np.save(os.path.join(HERE, name), array)


for dtype, tag in ((np.float64, "f8"), (np.float32, "f4")):
    a2 = matrix_2d(4, 3).astype(dtype)
    save(f"matrix_{tag}_c.npy", np.ascontiguousarray(a2))
    save(f"matrix_{tag}_fortran.npy", np.asfortranarray(a2))
    a3 = stack_3d(2, 3, 4).astype(dtype)
    save(f"stack_{tag}_c.npy", np.ascontiguousarray(a3))
    save(f"stack_{tag}_fortran.npy", np.asfortranarray(a3))
vector = np.arange(5, dtype=np.float64) - 1.5
vector[2] = np.nan
save("vector_f8.npy", vector)

# Colour limits: a causal 12 x 12 matrix of pseudo-random scores (NaN above the diagonal, one +inf and
# one -inf below it that must be ignored as non-finite). The percentiles printed here are hard-coded in
# tests/test_analysis.cpp.
rng = np.random.default_rng(20250921)
scores = rng.normal(size=(12, 12))
scores[np.triu_indices(12, 1)] = np.nan
scores[5, 2] = np.inf
scores[7, 7] = -np.inf
save("percentile_scores.npy", scores)
finite = scores[np.isfinite(scores)]
for q in (1, 99, 0, 100, 50, 37.5):
    print(f"np.percentile(finite, {q}) = {np.percentile(finite, q)!r}")

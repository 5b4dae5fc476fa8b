"""How many KID samples tell a run's layers apart: for 64, 128 and all (up to 1000) of the decoders' test images,
with 100 and 1000 subsets, the layer pairs at one checkpoint whose KIDs differ by more than twice their combined
standard error (kid_sem in quadrature; conservative, as rows of one table share images and splits).

    python -m ibprobe run --preset digits-quick --out /tmp/dq --quiet && python bench/kid_samples.py /tmp/dq

It rewrites DIR/analysis/kid.csv at each setting (the last one, the defaults, stays).
"""
import itertools
import math
import statistics
import sys

from ibprobe.estimators.kid import KidConfig
from ibprobe.measure.kid import measure_kid

print("images  subsets  subset  median sem  median std/sqrt(S)  layer pairs apart  apart from q(x)")
for n in (64, 128, 1000):
    for subsets in (100, 1000):
        rows = measure_kid(sys.argv[1], KidConfig(samples=n, subsets=subsets), device="cpu", progress=False)
        cond = [r for r in rows if r["reference"] == "conditional"]
        q = next(r for r in rows if r["reference"] == "unconditional")
        pairs = [(a, b) for e in sorted({r["epoch"] for r in cond})
                 for a, b in itertools.combinations([r for r in cond if r["epoch"] == e], 2)]
        apart = sum(abs(a["kid_mean"] - b["kid_mean"]) > 2 * math.hypot(a["kid_sem"], b["kid_sem"]) for a, b in pairs)
        vs_q = sum(abs(r["kid_mean"] - q["kid_mean"]) > 2 * math.hypot(r["kid_sem"], q["kid_sem"]) for r in cond)
        print(f"{cond[0]['n_fake'] + cond[0]['n_real']:>6}  {subsets:>7}  {cond[0]['subset_size']:>6}  "
              f"{statistics.median(r['kid_sem'] for r in cond):>10.4f}  "
              f"{statistics.median(r['kid_std'] / math.sqrt(subsets) for r in cond):>18.4f}  "
              f"{apart:>11}/{len(pairs)}  {vs_q:>11}/{len(cond)}", flush=True)
for r in rows:
    print(f"  {str(r['epoch']):>4} {str(r['layer']):<7} {r['reference']:<13} {r['kid_mean']:+.4f} ± {r['kid_sem']:.4f}")

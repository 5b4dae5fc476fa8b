"""A known-answer family outside the validation suites: 1x8x8 images, 4 templates of random levels (3..13 of 17)
and discretized-logistic noise of scale 0.5 around them in the same channel, N = 2000. X determines the template
T (64 pixels, templates far apart), so H(X) = 2 + the mean noise entropy (127.35 bits at seed 11), I(X; one-hot
T) = I(X; T as one scalar) = 2, I(X; T mod 2) = 1, I(X; noise) = I(X; constant) = 0, I(X; X) = H(X).

    python bench/mixed_family.py [DECODER_JSON]     e.g. '{"vector_cond": "mlp"}'

estimate_mi with a 1x32x5 decoder and `fit={"epochs": 15}` (the rest the defaults), without and then with the
label reference: one split (stratified by T) and one set of fits. About 10 minutes on one CPU core.
"""
import json
import sys
import tempfile
import time

import numpy as np
import torch

from decoders.device import one_cpu_thread
from ibprobe.estimators.decoder import estimate_mi
from ibprobe.tools.validate import entropy_bits, logistic_pmf, tolerance

L = 17


def family(n: int, seed: int, k: int = 4, scale: float = 0.5):
    rng = np.random.default_rng(seed)
    temps = rng.integers(3, L - 3, (k, 1, 8, 8)).astype(float)
    t = rng.integers(0, k, n)
    pmfs = {m: logistic_pmf(m, scale, L) for m in np.unique(temps)}
    x = np.zeros((n, 1, 8, 8), np.uint8)
    for i in range(n):
        for (c, a, b), m in np.ndenumerate(temps[t[i]]):
            x[i, c, a, b] = rng.choice(L, p=pmfs[m])
    h_noise = np.mean([sum(entropy_bits(pmfs[m]) for m in temps[j].ravel()) for j in range(k)])
    return x, t, float(np.log2(k) + h_noise)


def main() -> None:
    n = 2000
    dec = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    x, t, h_x = family(n, 11)
    rng = np.random.default_rng(3)
    codes = {"noise": rng.standard_normal((n, 4)).astype(np.float32), "constant": np.ones((n, 1), np.float32),
             "parity": np.eye(2, dtype=np.float32)[t % 2], "id": np.eye(4, dtype=np.float32)[t],
             "scalar id": t[:, None].astype(np.float32), "image": x.astype(np.float32)}
    truth = {"noise": 0.0, "constant": 0.0, "parity": 1.0, "id": 2.0, "scalar id": 2.0, "image": h_x}
    print(f"H(X) = {h_x:.2f} bits, N = {n}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, one_cpu_thread(torch.device("cpu")):
        for labelled in (False, True):
            t0 = time.time()
            est = estimate_mi(x, codes, levels=L, labels=t, label_reference=labelled, workdir=tmp,
                              decoder={"nr_resnet": 1, "nr_filters": 32, "nr_mix": 5, **dec}, fit={"epochs": 15},
                              device="cpu", progress=False)
            e0 = est["id"]
            print(f"{'with' if labelled else 'without'} the label reference ({time.time() - t0:.0f} s): reference "
                  f"{e0.h_x_ref}, eps_X {e0.h_x_bits - h_x:+.2f}")
            for name, e in est.items():
                ok = abs(e.bits - truth[name]) <= tolerance(truth[name])
                print(f"  {name:10s} truth {truth[name]:7.2f}  estimate {e.bits:7.2f}  raw {e.bits_raw:7.2f}  "
                      f"{'ok' if ok else 'MISS'}", flush=True)


if __name__ == "__main__":
    main()

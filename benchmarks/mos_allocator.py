"""One training step of wt2-awd-lstm-mos-cpu's mixture-of-softmaxes head (batch 20 x 70 tokens, 3 experts,
vocabulary 33,278), forward and backward, under glibc's default allocator policy ("default"), under the
mallopt half of the one ``selfish-train`` sets ("kept": large buffers from the heap, never trimmed) and under
all of it ("kept, no tcache": also glibc's per-thread cache off, through ``GLIBC_TUNABLES`` at the process's
start, ``selfish_deploy.training.allocator``), each in fresh processes, the policies' processes alternated.
Prints each policy's median and range over ``--runs`` processes. ``--mixture``: the head's (default
``floor``, zihangdai/mos's; ``benchmarks/mos_mixture.py`` compares the two).

    python benchmarks/mos_allocator.py [--threads 1] [--steps 3] [--runs 3] [--mixture floor]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

STEP = """
import json, resource, sys, time
from selfish_deploy.training.allocator import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
import torch
from selfish_deploy.families.mos import MoSDecoder
torch.manual_seed(0)
head = MoSDecoder(200, 100, 33278, 3, 0.15, sys.argv[3]).train()
x = torch.randn(70, 20, 200, requires_grad=True)
y = torch.randint(0, 33278, (70 * 20,))
def step():
    torch.nn.functional.nll_loss(head(x).view(-1, 33278), y).backward()
step()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(int(sys.argv[2])):
    step()
r1, n = resource.getrusage(resource.RUSAGE_SELF), int(sys.argv[2])
print(json.dumps({"s": (time.perf_counter() - t0) / n, "sys": (r1.ru_stime - r0.ru_stime) / n,
                  "faults": (r1.ru_minflt - r0.ru_minflt) / n, "peak_mib": r1.ru_maxrss / 1024}))
"""


POLICIES = ("default", "kept", "kept, no tcache")


def run(policy: str, threads: int, steps: int, mixture: str = "floor") -> dict:
    """One fresh process: ``steps`` timed steps under ``policy``; seconds, kernel seconds, faults per step."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if policy == "kept, no tcache":
        from selfish_deploy.training.allocator import TUNABLES
        env["GLIBC_TUNABLES"] = TUNABLES
    out = subprocess.run([sys.executable, "-c", STEP, policy.split(",")[0], str(steps), mixture], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per policy")
    parser.add_argument("--mixture", choices=("floor", "exact"), default="floor")
    args = parser.parse_args()
    results = {p: [] for p in POLICIES}
    for _ in range(args.runs):
        for p in POLICIES:
            results[p].append(run(p, args.threads, args.steps, args.mixture))
    med = {p: {k: statistics.median(r[k] for r in rs) for k in ("s", "sys", "faults")} for p, rs in results.items()}
    print(f"{args.threads} thread(s), {args.runs} processes per policy, {args.steps} steps each: median (range)")
    for p, rs in results.items():
        s = [r["s"] for r in rs]
        f = [r["faults"] for r in rs]
        print(f"  {p:16s} {med[p]['s']:.2f} s/step ({min(s):.2f}-{max(s):.2f})  kernel {med[p]['sys']:.2f} s/step  "
              f"page faults {med[p]['faults']:,.0f}/step ({min(f):,.0f}-{max(f):,.0f})  "
              f"peak RSS {max(r['peak_mib'] for r in rs):,.0f} MiB")
    for p in POLICIES[1:]:
        print(f"{p} vs default: {med['default']['s'] / med[p]['s']:.2f}x faster (medians)")


if __name__ == "__main__":
    main()

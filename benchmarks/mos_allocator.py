"""One training step of wt2-awd-lstm-mos-cpu's mixture-of-softmaxes head (batch 20 x 70 tokens, 3 experts,
vocabulary 33,278), forward and backward, under glibc's default allocator policy and under the one
``selfish-train`` sets (``selfish_deploy.training.allocator``), each in its own process, side by side.

    python benchmarks/mos_allocator.py [--threads 1] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import os
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
head = MoSDecoder(200, 100, 33278, 3, 0.15).train()
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
                  "faults": (r1.ru_minflt - r0.ru_minflt) / n}))
"""


def run(policy: str, threads: int, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", STEP, policy, str(steps)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    results = {p: run(p, args.threads, args.steps) for p in ("default", "kept")}
    for p, r in results.items():
        print(f"{p:8s} {r['s']:.2f} s/step  kernel {r['sys']:.2f} s/step  page faults {r['faults']:,.0f}/step")
    print(f"kept vs default: {results['default']['s'] / results['kept']['s']:.2f}x faster, "
          f"{results['default']['faults'] / max(results['kept']['faults'], 1):.1f}x fewer page faults")


if __name__ == "__main__":
    main()

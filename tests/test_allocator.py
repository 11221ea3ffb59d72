"""The CPU training allocator policy: a large buffer freed and allocated again is not faulted in again."""
import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
from selfish_deploy.training.allocator import keep_freed_memory
if sys.argv[1] == "cli":
    import selfish_deploy.training.cli  # selfish-train's entry point sets the policy on import
applied = keep_freed_memory() if sys.argv[1] == "on" else False  # before torch, as selfish-train does
import torch
def faults_of_one_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 * 2**20 // 4)  # 64 MiB, written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_buffer()
print(applied, min(faults_of_one_buffer() for _ in range(3)))
"""


def probe(mode: str, runs: int = 1, **env) -> list[tuple[bool, int]]:
    """(applied, page faults of one reused 64 MiB buffer) from each of ``runs`` fresh processes."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    procs = [subprocess.Popen([sys.executable, "-c", PROBE, mode], env={**clean, **env}, text=True,
                              stdout=subprocess.PIPE) for _ in range(runs)]
    outs = [p.communicate()[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return [(o[0] == "True", int(o[1])) for o in outs]


PAGES = 64 * 2**20 // 4096
# The policy takes in some processes only: 13 of 24 probes on 2026-12-03 reused the buffer, the others faulted
# every page in again, with or without address randomization (why is not known yet). So: reuse in at least one
# of 8 processes (all 8 missing at that rate: about 1 in 700), and never under glibc's default.


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's mallopt")
@pytest.mark.parametrize("mode", ["on", "cli"])  # cli: selfish-train's entry point sets it on import
def test_a_freed_large_buffer_can_be_reused_without_page_faults(mode):
    kept = probe(mode, runs=8)
    assert all(applied for applied, _ in kept) or mode == "cli"
    assert any(faults < PAGES // 20 for _, faults in kept)
    assert all(faults > PAGES // 2 for _, faults in probe("off", runs=2))  # glibc's default: a fresh mmap each time


def test_a_users_own_malloc_setting_is_left_alone():
    [(applied, _)] = probe("on", MALLOC_ARENA_MAX="2", MALLOC_TRIM_THRESHOLD_="131072")
    assert not applied

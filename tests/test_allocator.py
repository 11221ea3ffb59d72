"""The CPU training allocator policy: a large buffer freed and allocated again is not faulted in again."""
import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
from selfish_deploy.training.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False  # before torch, as selfish-train does
import torch
def faults_of_one_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 * 2**20 // 4)  # 64 MiB, written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_buffer()
print(applied, min(faults_of_one_buffer() for _ in range(3)))
"""


def probe(mode: str, **env) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env}, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's mallopt")
def test_a_freed_large_buffer_is_reused_without_page_faults():
    applied, faults = probe("on")
    _, default_faults = probe("off")
    pages = 64 * 2**20 // 4096
    assert applied
    assert default_faults > pages // 2  # glibc's default: every 64 MiB buffer a fresh mmap, faulted page by page
    assert faults < pages // 20


def test_a_users_own_malloc_setting_is_left_alone():
    applied, _ = probe("on", MALLOC_ARENA_MAX="2", MALLOC_TRIM_THRESHOLD_="131072")
    assert not applied

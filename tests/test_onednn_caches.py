"""A prefill replica sees a new input shape almost every batch; `bound_onednn_caches` keeps the memory oneDNN holds
per shape bounded. Each case runs in a fresh process, since the caches take their capacity at the first oneDNN op."""

import json
import os
import subprocess
import sys

import pytest

GROWTH_OF_NEW_SHAPES = """
import json, sys, psutil, torch
from overfill.engine.linear import bound_onednn_caches, make_linear
if sys.argv[1] != "default":
    bound_onednn_caches(int(sys.argv[1]))
torch.set_num_threads(1)
linear = make_linear(torch.randn(1536, 576))  # prepacked for oneDNN: what the model runner builds
linear(torch.randn(8, 576))
before = psutil.Process().memory_info().rss
for rows in range(100, 500):  # 400 batches, each of a row count not seen before
    linear(torch.randn(rows, 576))
print(json.dumps((psutil.Process().memory_info().rss - before) / 2**20))
"""


# glibc's allocator, fixed: freed outputs go back to the OS at once and one arena serves every thread, so RSS shows
# what the caches hold (with the adaptive defaults, the same bounded run measured anywhere from 15 to 60 MiB).
STEADY_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1"}


def clean_env() -> dict[str, str]:
    """This process's environment without cache capacities (an earlier test may have set them here)."""
    from overfill.engine.linear import ONEDNN_CACHE_ENV

    return {**{k: v for k, v in os.environ.items() if k not in ONEDNN_CACHE_ENV}, **STEADY_ALLOCATOR}


def rss_growth_mib(entries: str) -> float:
    done = subprocess.run([sys.executable, "-c", GROWTH_OF_NEW_SHAPES, entries], capture_output=True, text=True,
                          timeout=120, check=True, env=clean_env())
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bounded_caches_stop_growing_with_new_shapes_where_the_defaults_do_not():
    bounded, default = rss_growth_mib("16"), rss_growth_mib("default")
    assert bounded < 30, f"{bounded:.0f} MiB held after 400 new shapes with 16 cache entries"
    assert default > bounded + 100, (default, bounded)  # what the bound is for (251 vs 7 MiB measured)


def test_a_bound_below_one_is_refused():
    from overfill.engine.linear import bound_onednn_caches

    with pytest.raises(ValueError, match="entries must be >= 1"):
        bound_onednn_caches(0)

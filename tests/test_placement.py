"""GPU placement from the config: each pool's Ray actor options (GPUs, accelerator type) and bf16 by default on CUDA.
No cluster is started: Ray Serve validates the options when the deployment is declared."""

import torch

from overfill.model_loading import resolve_dtype
from overfill.serving.config import load_config


def test_pools_get_their_gpus_and_accelerator_type_as_actor_options():
    from services.app import _pool, actor_options
    from services.prefill.server import PrefillServer
    from services.router.request_router import LeastQueuedTokensRouter

    config = load_config(None, ["models.device=cuda", "kv.transport=nccl", "prefill.num_gpus=1", "decode.num_gpus=1",
                                "prefill.accelerator_type=H100"])
    assert actor_options(config.prefill) == {"num_cpus": 1.0, "num_gpus": 1.0, "accelerator_type": "H100"}
    assert actor_options(config.decode) == {"num_cpus": 1.0, "num_gpus": 1.0}  # no type: any GPU
    deployment = _pool(PrefillServer, "prefill", config.prefill, LeastQueuedTokensRouter, max_ongoing=8)
    assert deployment.ray_actor_options["accelerator_type"] == "H100"  # accepted by Serve's schema
    assert deployment.ray_actor_options["num_gpus"] == 1.0


def test_auto_dtype_is_bfloat16_on_cuda_and_float32_on_cpu():
    assert resolve_dtype("auto", "cuda") == torch.bfloat16 and resolve_dtype("auto", "cuda:1") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == torch.float32

import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def tiny_dir(tmp_path):
    from tests.tiny import save_tiny

    return save_tiny(tmp_path / "tiny-llama")


@pytest.fixture(scope="session")
def service_models(tmp_path_factory):
    """The tiny full model and its decoder every service test serves (tests/service_helpers.py), built once."""
    from tests.service_helpers import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("service-models"))


@pytest.fixture(scope="session", autouse=True)
def _one_ray_cluster_per_session():
    """The service tests share one Ray cluster and Serve instance (tests/service_helpers.py: session_ray), started by
    the first module that needs it; it is shut down here, once, at the end of the session."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from services.app import stop_service

        stop_service()

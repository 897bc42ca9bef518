import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def tiny_dir(tmp_path):
    from tests.tiny import save_tiny

    return save_tiny(tmp_path / "tiny-llama")

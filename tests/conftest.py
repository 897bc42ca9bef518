import functools
import os
import re
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


SESSION_RAY_GROUP = "session-ray"
# A module whose tests use the session's Ray cluster carries one of these markers (service: the service deployed on
# it; session_ray: the cluster alone), unless it starts a cluster of its own in another process.
_ON_SESSION_RAY = re.compile(r"pytest\.mark\.(service|session_ray)\b")
_OWN_RAY_CLUSTER = re.compile(r"pytest\.mark\.own_ray_cluster\b")


@functools.cache
def work_unit_of(rootpath: Path, module: str) -> str:
    """A test module's unit of work under pytest-xdist: SESSION_RAY_GROUP for the modules that use the session's Ray
    cluster, else the module itself. Decided from the module's source: the scheduler runs in the controller, which
    collects nothing (it sees node ids only)."""
    source = (rootpath / module).read_text()
    if _ON_SESSION_RAY.search(source) and not _OWN_RAY_CLUSTER.search(source):
        return SESSION_RAY_GROUP
    return module


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two pytest-xdist workers with --dist loadgroup, grouped here (xdist's own xdist_group marker
    no longer reaches its scheduler under pytest 9.2): every module that uses the session's Ray cluster runs in one
    worker, in file order, as without xdist (one cluster, one application at a time); every other module is a unit
    of its own, so that its module fixtures are built once. The session's Ray modules, the longest unit, start
    first; the other worker takes the rest meanwhile."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByModuleSessionRayTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit_of(config.rootpath, nodeid.split("::")[0])

        def _assign_work_unit(self, node) -> None:
            if SESSION_RAY_GROUP in self.workqueue:  # the longest unit: handed out first
                self.workqueue.move_to_end(SESSION_RAY_GROUP, last=False)
            super()._assign_work_unit(node)

    return ByModuleSessionRayTogether(config, log)


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

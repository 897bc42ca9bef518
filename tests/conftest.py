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
# The modules that deploy the service on the session's Ray cluster carry the service marker; those that run on a
# cluster of their own (in a subprocess, or started for the module) carry ray_apart too, or instead. These and the
# real_model modules are the long units of work.
_SERVICE = re.compile(r"pytest\.mark\.service\b")
_LONG_APART = re.compile(r"pytest\.mark\.(ray_apart|real_model)\b")


@functools.cache
def work_unit_of(rootpath: Path, module: str) -> tuple[str, bool]:
    """(unit, whether it is long) of a test module under pytest-xdist: SESSION_RAY_GROUP for the modules that deploy
    the service on the session's cluster, else the module itself. Decided from the module's source: the scheduler
    runs in xdist's controller, which collects nothing (it sees node ids only)."""
    source = (rootpath / module).read_text()
    if _LONG_APART.search(source):
        return module, True
    if _SERVICE.search(source):
        return SESSION_RAY_GROUP, True
    return module, False


def pytest_collection_modifyitems(config, items):
    """The tests that stop the session's Ray cluster (marker stops_session_ray) run last, so that no later test has
    to start it again (a cluster start costs 10-15 s of the two cores)."""
    items.sort(key=lambda item: item.get_closest_marker("stops_session_ray") is not None)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two pytest-xdist workers with --dist loadgroup, grouped here (xdist's own xdist_group marker
    no longer reaches its scheduler under pytest 9.2): every module that deploys the service on the session's Ray
    cluster runs in one worker, in file order, as without xdist (one cluster, one application at a time); every
    other module is a unit of its own, so that its module fixtures are built once. The session's Ray modules, the
    longest unit, are handed out first, then the other long ones (on a Ray cluster apart, or on the real model),
    then the rest.

    Measured on 2 cores: the machine is CPU-bound while the service modules deploy, so a second Ray cluster
    running service modules on the other worker (each worker its own session cluster) was no faster (631 s against
    639 s for the whole suite, each on a machine shared with other jobs)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    def unit(nodeid: str) -> tuple[str, bool]:
        return work_unit_of(config.rootpath, nodeid.split("::")[0])

    class ByModuleSessionRayTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit(nodeid)[0]

        def _assign_work_unit(self, node) -> None:
            apart = [scope for scope in self.workqueue
                     if scope != SESSION_RAY_GROUP and work_unit_of(config.rootpath, scope)[1]]
            first = [SESSION_RAY_GROUP] * (SESSION_RAY_GROUP in self.workqueue) + apart
            for scope in reversed(first):
                self.workqueue.move_to_end(scope, last=False)
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

"""deploy/kuberay/train-rayjob.yaml, checked for structure (no live cluster): its entrypoint is a valid
`overfill train` on Ray Train with one GPU per worker, the GPU worker group offers exactly those GPUs, and every path
the job reads or writes lies on the read-write volume that every pod mounts."""

import shlex
from pathlib import Path

import ray
import yaml

from overfill.cli.main import build_parser
from overfill.cli.train import train_spec_of

RAYJOB = Path(__file__).resolve().parents[1] / "deploy" / "kuberay" / "train-rayjob.yaml"


def rayjob() -> dict:
    (document,) = list(yaml.safe_load_all(RAYJOB.read_text()))
    assert document["apiVersion"] == "ray.io/v1" and document["kind"] == "RayJob"
    return document


def entrypoint_args():
    words = shlex.split(rayjob()["spec"]["entrypoint"])
    assert words[:2] == ["overfill", "train"]
    return build_parser().parse_args(words[1:])


def pods(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


def test_the_entrypoint_is_data_parallel_training_on_gpus():
    args = entrypoint_args()
    spec = train_spec_of(args)  # what `overfill train` would run: every field valid
    assert spec.num_workers > 1 and spec.device == "cuda" and spec.mode == "overfill"
    assert spec.global_batch == 64 and spec.max_length == 2048  # the OverFill paper's 3B -> 1B batch and length
    assert args.resume and args.max_failures >= 1  # a retried job continues from the last checkpoint


def test_the_gpu_worker_group_offers_one_gpu_per_worker_and_the_head_none():
    document = rayjob()
    cluster = document["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    num_gpus = 0
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]  # DDP needs all of them, always
        num_gpus += group["replicas"] * int(resources["limits"]["nvidia.com/gpu"])
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        (shm,) = [v for v in group["template"]["spec"]["volumes"] if v["name"] == mounts["/dev/shm"]]
        assert shm["emptyDir"]["medium"] == "Memory"  # NCCL between the GPUs of a pod
    assert num_gpus == train_spec_of(entrypoint_args()).num_workers
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    assert document["spec"]["shutdownAfterJobFinishes"] is True  # the GPUs go back when training ends


def test_every_path_of_the_job_is_on_the_shared_read_write_volume():
    spec = train_spec_of(entrypoint_args())
    cluster = rayjob()["spec"]["rayClusterSpec"]
    claims = set()
    for pod in pods(cluster):
        (container,) = pod["spec"]["containers"]
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounted = [(m, volumes[m["name"]]) for m in container["volumeMounts"]
                   if "persistentVolumeClaim" in volumes[m["name"]]]
        for path in (spec.model, spec.decoder, spec.data, spec.output):
            (mount, volume), = [(m, v) for m, v in mounted if path.startswith(m["mountPath"] + "/")]
            assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
            claims.add(volume["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1  # one volume, so every pod sees the checkpoint and Ray Train's storage

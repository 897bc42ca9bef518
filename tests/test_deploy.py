"""The deploy files: every Ray Serve config validates against Ray Serve's own schema and maps onto a valid
ServiceConfig; each registers the gRPC servicers and sets the Serve process settings `overfill serve` does;
autoscaling policies import and accept their arguments; the KubeRay RayService puts prefill and decode on separate
GPU worker groups, serves through KubeRay's serve Service, probes every pod, mounts the models, and runs the image
deploy/Dockerfile builds."""

import re

from pathlib import Path

import pytest
import yaml
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy
from ray.serve.schema import ServeDeploySchema

from overfill.serving.config import APP_IMPORT_PATH, ConfigError, ServiceConfig, load_config
from services.app import SERVE_PROCESS_ENV, serve_config_of

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SERVE_FILES = sorted(DEPLOY.glob("*.yaml"))
RAYSERVICE = DEPLOY / "kuberay" / "rayservice.yaml"
POOLS = {"router", "prefill", "decode"}


def rayservice_documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(RAYSERVICE.read_text())}


def serve_configs() -> list[tuple[str, dict]]:
    files = [(path.name, yaml.safe_load(path.read_text())) for path in SERVE_FILES]
    return files + [("rayservice serveConfigV2", yaml.safe_load(rayservice_documents()["RayService"]["spec"]
                                                                ["serveConfigV2"]))]


def our_app(serve_config: dict) -> dict:
    (app,) = [a for a in serve_config["applications"] if a["import_path"] == APP_IMPORT_PATH]
    return app


def test_the_deploy_files_are_there():
    assert {p.name for p in SERVE_FILES} >= {"local.yaml", "gpu-single-node.yaml"}


@pytest.mark.parametrize("name, serve_config", serve_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_serve_config_validates_against_ray_serve_schema(name, serve_config, tmp_path):
    schema = ServeDeploySchema.model_validate(serve_config)
    app = our_app(serve_config)
    # The args are a valid ServiceConfig, with the ports and names Serve owns taken from the Serve part.
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(serve_config))
    config = load_config(path)
    assert config.server.grpc_port == schema.grpc_options.port and config.server.app_name == app["name"]
    # Deployment overrides name real deployments, and Ray Serve accepts their autoscaling configs and policies.
    for deployment in app.get("deployments", []):
        assert deployment["name"] in POOLS
        if "autoscaling_config" in deployment:
            autoscaling = AutoscalingConfig(**deployment["autoscaling_config"])
            instantiate(autoscaling.policy)
    if "autoscaling_policy" in app:
        instantiate(AutoscalingPolicy(**app["autoscaling_policy"]))
        scaled = {d["name"] for d in app["deployments"] if "autoscaling_config" in d}
        assert scaled >= {"prefill", "decode"}, "an application policy scales only deployments with autoscaling_config"


def instantiate(policy: AutoscalingPolicy):
    """What the Serve controller does with a policy: import it, and build it with its kwargs if it is a class."""
    target = policy.get_policy()
    return target(**policy.policy_kwargs) if isinstance(target, type) else target


@pytest.mark.parametrize("name, serve_config", serve_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_serve_config_registers_and_sets_what_overfill_serve_does(name, serve_config, tmp_path):
    """`serve run FILE` and KubeRay start Serve from the file alone: its proxy must register the lenient servicer
    (bad UTF-8 -> INVALID_ARGUMENT, an oversized request refused unparsed) and the health service, and its controller
    (hence its proxies) must get the same environment as under `overfill serve`."""
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(serve_config))
    ours = ServeDeploySchema.model_validate(serve_config_of(load_config(path), serve_config))
    schema = ServeDeploySchema.model_validate(serve_config)
    assert schema.grpc_options.grpc_servicer_functions == ours.grpc_options.grpc_servicer_functions
    assert schema.controller_options.runtime_env == ours.controller_options.runtime_env
    assert ours.controller_options.runtime_env["env_vars"] == SERVE_PROCESS_ENV


def test_serve_config_of_adds_the_servicers_and_settings_to_a_file_without_them():
    serve_config = serve_config_of(load_config(None), {"applications": [{"import_path": APP_IMPORT_PATH}]})
    schema = ServeDeploySchema.model_validate(serve_config)
    assert schema.grpc_options.grpc_servicer_functions == [
        "services.router.grpc_handlers.add_generation_servicer",
        "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server"]
    assert schema.controller_options.runtime_env == {"env_vars": SERVE_PROCESS_ENV}


def test_service_config_round_trips_through_its_serve_config(tmp_path):
    config = load_config(None, ["prefill.max_batch_size=3", "server.grpc_port=9100", "server.app_name=of"])
    serve_config = serve_config_of(config, yaml.safe_load((DEPLOY / "local.yaml").read_text()))
    ServeDeploySchema.model_validate(serve_config)
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(serve_config))
    assert load_config(path) == config
    # The deploy file's own Serve options survive (the decode pool's autoscaling).
    assert "autoscaling_config" in our_app(serve_config)["deployments"][0]


def test_the_kv_secret_is_in_no_part_of_the_serve_config():
    """Ray logs an application's args and its runtime_env (runtime_env_agent.log): the secret reaches the builder
    through the cluster's store instead (services/kv_secret.py; tests/test_security_service.py checks the logs)."""
    config = load_config(None, ["kv.secret=s3cret-for-this-test"])
    serve_config = serve_config_of(config, yaml.safe_load((DEPLOY / "local.yaml").read_text()))
    assert "secret" not in our_app(serve_config)["args"]["kv"] and "s3cret" not in yaml.safe_dump(serve_config)


def test_serve_owned_fields_are_refused_in_args(tmp_path):
    serve_config = yaml.safe_load((DEPLOY / "local.yaml").read_text())
    our_app(serve_config)["args"]["server"]["grpc_port"] = 9001
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(serve_config))
    with pytest.raises(ConfigError, match="server.grpc_port comes from the Ray Serve part"):
        load_config(path)


def test_rayservice_puts_prefill_and_decode_on_separate_gpu_groups():
    cluster = rayservice_documents()["RayService"]["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    app = our_app(yaml.safe_load(rayservice_documents()["RayService"]["spec"]["serveConfigV2"]))
    options = {d["name"]: d.get("ray_actor_options", {}) for d in app["deployments"]}
    group_resources = {name: set(yaml.safe_load(yaml.safe_load(g["rayStartParams"]["resources"])))
                       for name, g in groups.items()}
    for pool, group in (("prefill", "prefill-gpu"), ("decode", "decode-gpu")):
        assert options[pool]["num_gpus"] == 1
        (wanted,) = options[pool]["resources"]
        assert [name for name, resources in group_resources.items() if wanted in resources] == [group]
        container = groups[group]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert app["args"]["models"]["device"] == "cuda"


def test_rayservice_ports_probes_models_and_secret():
    documents = rayservice_documents()
    spec = documents["RayService"]["spec"]
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    cluster = spec["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    grpc_port = serve_config["grpc_options"]["port"]
    models = our_app(serve_config)["args"]["models"]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve-grpc"] == grpc_port
        assert "readinessProbe" in container and "livenessProbe" in container
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
        assert mount["readOnly"] and all(models[k].startswith(mount["mountPath"] + "/") for k in ("full", "decoder"))
        assert any(v["name"] == "models" and "persistentVolumeClaim" in v for v in pod["spec"]["volumes"])
        secret = {e["name"]: e for e in container["env"]}["OVERFILL_KV_SECRET"]
        assert secret["valueFrom"]["secretKeyRef"]["name"] == "overfill-kv"
    # KubeRay's serve Service carries the head's ports named serve and serve-*: the HTTP and the gRPC API.
    assert set(documents) == {"RayService"}, "no Service of our own: KubeRay's serve Service selects healthy proxies"
    head_ports = {p["name"]: p["containerPort"] for p in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
                  ["ports"]}
    assert head_ports["serve"] == serve_config["http_options"]["port"]
    service_ports = {p["name"]: p for p in spec["serveService"]["spec"]["ports"]}
    assert {name: (p["port"], p["targetPort"]) for name, p in service_ports.items()} == {
        "serve": (head_ports["serve"], "serve"), "serve-grpc": (grpc_port, "serve-grpc")}
    assert service_ports["serve-grpc"]["appProtocol"] == "grpc"
    assert our_app(serve_config)["args"]["kv"]["bind_host"] == "node-ip"  # decode pulls from other pods


def test_every_serve_config_is_a_service_config_default_where_silent():
    config = load_config(DEPLOY / "local.yaml")
    assert isinstance(config, ServiceConfig) and config.models.full == "smollm2-135m"
    assert config.server.grpc_port == 9000 and config.server.metrics_port == 8080


def test_the_dockerfile_builds_the_image_the_manifests_run_with_the_ray_they_name():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (image,) = set(re.findall(r"docker build -f deploy/Dockerfile -t (\S+) \.", dockerfile))
    (base_version,) = re.findall(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py311", dockerfile, re.MULTILINE)
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    assert f'"ray[serve,train]=={base_version}"' in pyproject
    for manifest in ("rayservice.yaml", "train-rayjob.yaml"):
        for document in yaml.safe_load_all((DEPLOY / "kuberay" / manifest).read_text()):
            cluster = document["spec"].get("rayClusterConfig") or document["spec"]["rayClusterSpec"]  # RayJob
            assert cluster["rayVersion"] == base_version, manifest
            pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
            assert {c["image"] for pod in pods for c in pod["spec"]["containers"]} == {image}, manifest


def test_the_network_policy_keeps_ray_and_kv_ports_to_the_clusters_own_pods():
    """Everything but the public APIs is reachable only from the RayService's own pods (and the dashboard from the
    operator, metrics from monitoring): the policy selects every pod the RayService makes."""
    policy = yaml.safe_load((DEPLOY / "kuberay" / "networkpolicy.yaml").read_text())
    selector = policy["spec"]["podSelector"]["matchLabels"]
    cluster = rayservice_documents()["RayService"]["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert all(selector.items() <= t["metadata"]["labels"].items() for t in templates)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    open_to_all, by_source = set(), {}
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        if "from" not in rule:
            open_to_all |= ports
            continue
        for source in rule["from"]:
            by_source[yaml.safe_dump(source)] = ports
    assert open_to_all == {8000, 9000}  # the public gRPC and HTTP APIs only
    own_pods = yaml.safe_dump({"podSelector": {"matchLabels": selector}})
    assert by_source.pop(own_pods) == set()  # every port, from the cluster's own pods
    assert sorted(by_source.values(), key=sorted) == [{8080}, {8265}]  # the operator: the dashboard only


@pytest.mark.parametrize("name, serve_config", [c for c in serve_configs() if c[0] != "local.yaml"],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_cluster_deploy_files_log_json(name, serve_config):
    """Off a laptop, logs go to a pipeline: every replica of the app logs JSON lines (local.yaml keeps text)."""
    logging_config = ServeDeploySchema.model_validate(serve_config).applications[0].logging_config
    assert logging_config is not None and logging_config.encoding == "JSON"


OPERATOR_POD = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "kuberay-operator"}}}


def who_reaches(policy: dict, port: int) -> list:
    """The peers a NetworkPolicy lets reach `port` ("anyone" for a rule without `from`)."""
    peers = []
    for rule in policy["spec"]["ingress"]:
        if rule.get("ports") and port not in {p["port"] for p in rule["ports"]}:
            continue
        peers += rule.get("from", ["anyone"])
    return peers


@pytest.mark.parametrize("manifest, policy_file, extra_peers", [
    ("rayservice.yaml", "networkpolicy.yaml", []),
    # K8sJobMode: the RayJob's submitter pod runs `ray job submit` against the dashboard
    ("train-rayjob.yaml", "train-networkpolicy.yaml",
     [{"podSelector": {"matchLabels": {"ray.io/originated-from-crd": "RayJob",
                                       "ray.io/originated-from-cr-name": "overfill-train"}}}]),
])
def test_the_dashboard_listens_on_the_pod_network_for_the_operator_and_only_it_gets_in(manifest, policy_file,
                                                                                        extra_peers):
    """KubeRay's operator deploys serveConfigV2, and follows a RayJob, through the head Service's dashboard port
    (8265): bound to 127.0.0.1 the RayService would never deploy. So the dashboard stays on 0.0.0.0, and the policy
    lets only the cluster's own pods, the operator's pod (namespace AND pod label, in one peer: not every pod of that
    namespace) and, for a RayJob, its submitter reach it; the dashboard agent only the cluster's own pods."""
    (document,) = yaml.safe_load_all((DEPLOY / "kuberay" / manifest).read_text())
    cluster = document["spec"].get("rayClusterConfig") or document["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    policy = yaml.safe_load((DEPLOY / "kuberay" / policy_file).read_text())
    selector = policy["spec"]["podSelector"]["matchLabels"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert all(selector.items() <= t["metadata"]["labels"].items() for t in templates)
    own_pods = {"podSelector": {"matchLabels": selector}}
    assert who_reaches(policy, 8265) == [own_pods, OPERATOR_POD, *extra_peers]
    assert who_reaches(policy, 52365) == [own_pods]
    assert who_reaches(policy, 6379) == [own_pods]  # the GCS


def test_the_rayservice_runs_its_kv_service_on_mutual_tls_from_a_mounted_secret(tmp_path):
    """Every pod mounts the Secret overfill-kv-tls where kv.tls_* point; the config turns mutual TLS on with the
    certificate's fixed name (pod IPs are in no certificate), and a Secret of cert-manager's shape loads."""
    from overfill.serving.config import config_from_dict, kv_tls_of
    from tests.test_kv_mtls import write_ca_and_certificate

    spec = rayservice_documents()["RayService"]["spec"]
    args = our_app(yaml.safe_load(spec["serveConfigV2"]))["args"]
    kv = args["kv"]
    cluster = spec["rayClusterConfig"]
    for pod in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        (container,) = pod["spec"]["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "kv-tls"]
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "kv-tls"]
        assert mount["readOnly"] and volume["secret"]["secretName"] == "overfill-kv-tls"
        assert {Path(kv[f"tls_{name}_file"]).parent for name in ("cert", "key", "ca")} == {Path(mount["mountPath"])}
    assert kv["tls_server_name"] == "overfill-kv"
    pems = write_ca_and_certificate(tmp_path, "cluster", [kv["tls_server_name"]])
    names = {"cert": pems.cert, "key": pems.key, "ca": pems.ca}
    mounted = {f"tls_{name}_file": str(tmp_path / Path(kv[f"tls_{name}_file"]).name) for name in names}
    for name, path in names.items():  # the Secret's keys: tls.crt, tls.key, ca.crt
        path.rename(mounted[f"tls_{name}_file"])
    config = config_from_dict({**args, "kv": {**kv, **mounted}})
    assert kv_tls_of(config.kv).server_name == "overfill-kv"

"""Autoscaling policies as pure functions of an autoscaling context (no Ray cluster): each pool on its own signal,
and the application policy keeping the decode:prefill ratio in bounds."""

from types import SimpleNamespace

import pytest

from services.autoscaling import (
    DECODE_METRIC,
    PREFILL_METRIC,
    DecodeKVDemandPolicy,
    PDRatioPolicy,
    PrefillQueuedTokensPolicy,
    bounded_ratio,
)


def context(name: str, metrics: dict[str, list[float]], replicas: int = 1, ongoing: float = 0.0):
    """What Ray Serve hands a policy: per-replica aggregated custom metrics, plus what its default policy reads."""
    per_replica = {metric: {f"{name}-{i}": v for i, v in enumerate(values)} for metric, values in metrics.items()}
    return SimpleNamespace(
        deployment_id=name, deployment_name=name, aggregated_metrics=per_replica, current_num_replicas=replicas,
        target_num_replicas=replicas, total_num_requests=ongoing, policy_state={},
        config=SimpleNamespace(get_target_ongoing_requests=lambda: 2.0, get_upscaling_factor=lambda: 1.0),
    )


def test_prefill_scales_with_queued_prompt_tokens():
    policy = PrefillQueuedTokensPolicy(target_queued_tokens=1000)
    assert policy(context("prefill", {PREFILL_METRIC: [2500.0, 1500.0]}, replicas=2))[0] == 4.0
    assert policy(context("prefill", {PREFILL_METRIC: [100.0]}))[0] == 1.0     # some demand keeps one replica
    assert policy(context("prefill", {PREFILL_METRIC: [0.0, 0.0]}, replicas=2))[0] == 0.0


def test_decode_scales_with_kv_demand_including_waiting_sequences():
    policy = DecodeKVDemandPolicy(target_kv_usage=0.5)
    # One replica full (1.0) and with as many waiting again (2.0 in all): 2.0 / 0.5 = 4 replicas.
    assert policy(context("decode", {DECODE_METRIC: [2.0]}))[0] == 4.0
    assert policy(context("decode", {DECODE_METRIC: [0.25, 0.25]}, replicas=2))[0] == 1.0


def test_before_any_report_the_ongoing_requests_policy_decides():
    desired, _ = DecodeKVDemandPolicy()(context("decode", {}, replicas=2, ongoing=8.0))
    assert desired == pytest.approx(4.0)  # 8 ongoing / target 2 per replica


def test_policy_arguments_are_checked():
    with pytest.raises(ValueError, match="target_kv_usage"):
        DecodeKVDemandPolicy(target_kv_usage=1.5)
    with pytest.raises(ValueError, match="target_queued_tokens"):
        PrefillQueuedTokensPolicy(target_queued_tokens=0)
    with pytest.raises(ValueError, match="min_decode_per_prefill"):
        PDRatioPolicy(min_decode_per_prefill=3, max_decode_per_prefill=2)


@pytest.mark.parametrize("prefill, decode, expected", [
    (1, 1, (1, 1)), (4, 1, (4, 2)), (1, 9, (3, 9)), (2, 5, (2, 5)), (0, 0, (1, 1)),
])
def test_bounded_ratio_raises_the_short_pool(prefill, decode, expected):
    assert bounded_ratio(prefill, decode, min_decode_per_prefill=0.5, max_decode_per_prefill=3.0) == expected


def test_application_policy_combines_pool_signals_and_ratio():
    policy = PDRatioPolicy(target_queued_tokens=1000, target_kv_usage=0.5, min_decode_per_prefill=1.0,
                           max_decode_per_prefill=2.0)
    contexts = {
        "prefill": context("prefill", {PREFILL_METRIC: [100.0]}),
        "decode": context("decode", {DECODE_METRIC: [3.0]}),         # wants 6 decode replicas
        "router": context("router", {}, replicas=1, ongoing=1.0),
    }
    desired, state = policy(contexts)
    assert desired["decode"] == 6 and desired["prefill"] == 3        # 6 / max ratio 2
    assert desired["router"] == pytest.approx(0.5) and state == {}

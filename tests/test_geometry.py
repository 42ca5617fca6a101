"""Arithmetic of nnlite.network.geometry (the network engineer adds checks against a real network)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from nnlite.network.geometry import (activation_bytes, conv_feature_map_elements, count_parameters,
                                     saved_elements, stage_shapes, training_memory_bytes)
from nnlite.plans import NetworkPlan

# Facts measured on nnU-Net v2.8.1 / dynamic_network_architectures 0.4.4 (reference doc §3.5, §5).
HIPPOCAMPUS_PARAMS = 5_603_177
SIX_STAGE_PARAMS = 31_196_399  # "31.2 M"
SIX_STAGE_PROXY_128 = 452_796_416  # planner's network: no deep supervision
SIX_STAGE_PROXY_128_DS = 453_694_976  # with every head


def hippocampus_plan() -> NetworkPlan:
    return NetworkPlan(strides=((1, 1, 1),) + ((2, 2, 2),) * 3, kernel_sizes=((3, 3, 3),) * 4,
                       features_per_stage=(32, 64, 128, 256))


def six_stage_plan() -> NetworkPlan:
    return NetworkPlan(strides=((1, 1, 1),) + ((2, 2, 2),) * 5, kernel_sizes=((3, 3, 3),) * 6,
                       features_per_stage=(32, 64, 128, 256, 320, 320))


def test_parameter_counts_match_the_reference():
    assert count_parameters(hippocampus_plan(), 1, 3) == HIPPOCAMPUS_PARAMS
    assert count_parameters(six_stage_plan(), 1, 3) == SIX_STAGE_PARAMS


def test_proxy_matches_the_reference():
    plan = six_stage_plan()
    assert conv_feature_map_elements(plan, (128,) * 3, 1, 3) == SIX_STAGE_PROXY_128
    assert conv_feature_map_elements(plan, (128,) * 3, 1, 3, deep_supervision=True) == SIX_STAGE_PROXY_128_DS


def test_stage_shapes_follow_strides():
    shapes = stage_shapes(hippocampus_plan(), (40, 56, 40))
    assert shapes == [(40, 56, 40), (20, 28, 20), (10, 14, 10), (5, 7, 5)]


@st.composite
def plans(draw):
    ndim = draw(st.sampled_from([2, 3]))
    n = draw(st.integers(2, 6))
    strides = [(1,) * ndim] + [tuple(draw(st.sampled_from([1, 2])) for _ in range(ndim)) for _ in range(n - 1)]
    kernels = [tuple(draw(st.sampled_from([1, 3])) for _ in range(ndim)) for _ in range(n)]
    plan = NetworkPlan(strides=tuple(strides), kernel_sizes=tuple(kernels),
                       features_per_stage=tuple(min(32 * 2**i, 320) for i in range(n)))
    patch = tuple(t * draw(st.integers(1, 3)) for t in plan.total_stride)
    return plan, patch


@settings(max_examples=30, deadline=None)
@given(plans(), st.integers(1, 4), st.integers(2, 5), st.integers(1, 4))
def test_memory_grows_with_batch_and_splits_into_parts(plan_patch, c_in, k, batch):
    plan, patch = plan_patch
    one = training_memory_bytes(plan, patch, c_in, k, batch)
    more = training_memory_bytes(plan, patch, c_in, k, batch + 1)
    assert more > one
    assert activation_bytes(plan, patch, c_in, k, batch, 4) == batch * activation_bytes(plan, patch, c_in, k, 1, 4)
    # saved tensors: at least the input and two tensors per conv unit output of the proxy's encoder
    enc = sum(2 * plan.conv_per_stage * f * math.prod(s)
              for f, s in zip(plan.features_per_stage, stage_shapes(plan, patch)))
    assert saved_elements(plan, patch, c_in) >= enc + c_in * math.prod(patch)
    assert activation_bytes(plan, patch, c_in, k, batch, 4) > activation_bytes(plan, patch, c_in, k, batch, 2)

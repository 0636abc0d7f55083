"""Feature losses (FitNet, AT, NST, SP, RKD, PKT) against explicit-loop numpy versions of the papers' formulas (in
RepDistiller's form), hand-computed cases, FitNet's regressor shapes, and no gradient reaching the target."""
import math

import harness.models  # noqa: F401  (first: the torchvision shim runs before timm is imported)
import numpy as np
import pytest
import torch
from torch import nn

from methods.common.feature_losses import (ConvRegressor, at_loss, attention_map, hint_loss, nst_loss,
                                           pairwise_distances, pkt_loss, rkd_loss, sp_loss)
from tests.helpers import np_at, np_attention, np_hint, np_nst, np_pkt, np_rkd_parts, np_sp, tt

RNG = np.random.default_rng(0)
S_MAPS = [RNG.normal(size=(3, 4, 4, 4)), RNG.normal(size=(3, 5, 2, 2))]
T_MAPS = [RNG.normal(size=(3, 2, 4, 4)), RNG.normal(size=(3, 6, 4, 4))]  # second pair: the target map is larger
S_VEC = RNG.normal(size=(5, 6))
T_VEC = RNG.normal(size=(5, 3)) * 2.0 + 0.5


# --- independent numpy references (explicit loops) ----------------------------------------------------------------


# --- golden values -------------------------------------------------------------------------------------------------

def test_hint_golden_and_by_hand():
    s, t = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(2, 3, 2, 2))
    assert hint_loss(tt(s), tt(t)).item() == pytest.approx(np_hint(s, t), abs=1e-12)
    assert hint_loss(tt([[1.0, 2.0]]), tt([[0.0, 0.0]])).item() == pytest.approx(2.5)  # (1 + 4) / 2


def test_at_golden_with_pooling_and_by_hand():
    assert S_MAPS[1].shape[2] < T_MAPS[1].shape[2]  # the target map of the second pair is pooled
    got = at_loss([tt(m) for m in S_MAPS], [tt(m) for m in T_MAPS]).item()
    assert got == pytest.approx(np_at(S_MAPS, T_MAPS), abs=1e-12)
    assert at_loss(tt(S_MAPS[0]), tt(T_MAPS[0]), p=4.0).item() == pytest.approx(np_at(S_MAPS[:1], T_MAPS[:1], 4.0),
                                                                               abs=1e-12)
    # a single map pair of one sample, one channel, two positions: attentions (1, 0) and (0, 1) → mean(1, 1) = 1
    assert at_loss(tt([[[[3.0, 0.0]]]]), tt([[[[0.0, -2.0]]]])).item() == pytest.approx(1.0)
    # the student list is longer: the extra map is left out (pairs from the first on)
    longer = at_loss([tt(m) for m in S_MAPS], [tt(T_MAPS[0])]).item()
    assert longer == pytest.approx(np_at(S_MAPS[:1], T_MAPS[:1]), abs=1e-12)


def test_attention_map_is_unit_norm_channel_mean():
    f = tt(RNG.normal(size=(2, 3, 2, 2)))
    a = attention_map(f)
    assert a.shape == (2, 4)
    np.testing.assert_allclose(a.norm(dim=1).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(a.numpy(), np_attention(f.numpy()), atol=1e-12)


def test_nst_golden_with_different_widths_and_pooling():
    got = nst_loss([tt(m) for m in S_MAPS], [tt(m) for m in T_MAPS]).item()
    assert got == pytest.approx(np_nst(S_MAPS, T_MAPS), abs=1e-12)
    assert got > 0
    same = nst_loss(tt(S_MAPS[0]), tt(S_MAPS[0])).item()
    assert same == pytest.approx(0.0, abs=1e-12)  # MMD² of identical distributions


def test_sp_golden_and_scale_invariance():
    s, t = S_MAPS[0], T_MAPS[1]  # different channels and sizes: the Gram matrices are 3×3 either way
    assert sp_loss(tt(s), tt(t)).item() == pytest.approx(np_sp(s, t), abs=1e-12)
    assert sp_loss(tt(S_VEC), tt(T_VEC)).item() == pytest.approx(np_sp(S_VEC, T_VEC), abs=1e-12)
    # row normalisation: scaling the student's features changes nothing
    assert sp_loss(tt(3.0 * s), tt(t)).item() == pytest.approx(np_sp(s, t), abs=1e-12)


def test_rkd_golden_and_weights():
    d, a = np_rkd_parts(S_VEC, T_VEC)
    assert d > 0 and a > 0
    assert rkd_loss(tt(S_VEC), tt(T_VEC)).item() == pytest.approx(25 * d + 50 * a, abs=1e-10)
    assert rkd_loss(tt(S_VEC), tt(T_VEC), 1.0, 0.0).item() == pytest.approx(d, abs=1e-12)
    assert rkd_loss(tt(S_VEC), tt(T_VEC), 0.0, 1.0).item() == pytest.approx(a, abs=1e-12)
    # distance potentials are scale-free and angles are too: a scaled, shifted copy gives 0
    assert rkd_loss(tt(2.0 * S_VEC + 1.0), tt(S_VEC)).item() == pytest.approx(0.0, abs=1e-10)


def test_pairwise_distances_by_hand():
    e = tt([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    np.testing.assert_allclose(pairwise_distances(e).numpy(),
                               [[0, 5, 1], [5, 0, math.sqrt(18)], [1, math.sqrt(18), 0]], atol=1e-12)


def test_pkt_golden_and_by_hand():
    assert pkt_loss(tt(S_VEC), tt(T_VEC)).item() == pytest.approx(np_pkt(S_VEC, T_VEC), abs=1e-12)
    assert pkt_loss(tt(S_VEC), tt(T_VEC), eps=1e-3).item() == pytest.approx(np_pkt(S_VEC, T_VEC, 1e-3), abs=1e-12)
    # two orthogonal unit vectors: K = [[1, .5], [.5, 1]] → P = [[2/3, 1/3], [1/3, 2/3]]; two parallel: P = ½ everywhere
    p = np.array([[2, 1], [1, 2]]) / 3
    expected = np.mean(0.5 * np.log(0.5 / p))
    got = pkt_loss(tt([[1.0, 0.0], [0.0, 1.0]]), tt([[1.0, 1.0], [2.0, 2.0]]), eps=0.0).item()
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("loss,student,target", [
    (hint_loss, S_MAPS[0], S_MAPS[0][::-1].copy()),
    (at_loss, S_MAPS[1], T_MAPS[1]),
    (nst_loss, S_MAPS[0], T_MAPS[0]),
    (sp_loss, S_MAPS[0], T_MAPS[1]),
    (rkd_loss, S_VEC, T_VEC),
    (pkt_loss, S_VEC, T_VEC),
], ids=["hint", "at", "nst", "sp", "rkd", "pkt"])
def test_the_target_gets_no_gradient(loss, student, target):
    s, t = tt(student, grad=True), tt(target, grad=True)
    loss(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()


# --- FitNet's regressor -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("student,target,kind,kernel,stride", [
    ((16, 14, 14), (32, 7, 7), nn.Conv2d, (3, 3), (2, 2)),
    ((32, 7, 7), (16, 14, 14), nn.ConvTranspose2d, (4, 4), (2, 2)),
    ((8, 7, 7), (4, 3, 3), nn.Conv2d, (5, 5), (1, 1)),
    ((8, 3, 3), (4, 7, 7), nn.ConvTranspose2d, (5, 5), (1, 1)),
    ((8, 5, 5), (6, 5, 5), nn.Conv2d, (1, 1), (1, 1)),
])
def test_regressor_maps_to_the_target_shape(student, target, kind, kernel, stride):
    reg = ConvRegressor(student, target)
    assert type(reg.conv) is kind and reg.conv.kernel_size == kernel and reg.conv.stride == stride
    out = reg(torch.randn(2, *student))
    assert tuple(out.shape[1:]) == target and (out >= 0).all()


def test_regressor_is_conv_bn_relu_and_rejects_mixed_sizes():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    reg = ConvRegressor((3, 4, 4), (2, 4, 4)).double()
    with torch.no_grad():
        y = reg.conv(x).numpy()
        mean, var = y.mean(axis=(0, 2, 3), keepdims=True), y.var(axis=(0, 2, 3), keepdims=True)
        expected = np.maximum((y - mean) / np.sqrt(var + 1e-5), 0.0)  # BN at init: γ = 1, β = 0, batch statistics
        np.testing.assert_allclose(reg(x).numpy(), expected, atol=1e-10)
        plain = ConvRegressor((3, 4, 4), (2, 4, 4), relu=False).double()(x)
        assert (plain < 0).any()
    with pytest.raises(ValueError, match="one axis"):
        ConvRegressor((3, 6, 3), (3, 3, 6))


def test_offline_and_online_versions_share_one_feature_term():
    """AT, SP: the offline method and its online version read the same features and call the same loss; a term passes
    the method's own hyper-parameters by name (AT's p, RKD's weights, PKT's eps)."""
    from types import SimpleNamespace

    from methods.at import AT as OfflineAT
    from methods.common import feature_terms
    from methods.common.feature_losses import at_loss, rkd_loss
    from methods.dml_at import DMLAT
    from methods.dml_rkd import DMLRKD
    from methods.dml_sp import DMLSP
    from methods.sp import SP as OfflineSP

    assert OfflineAT.feature_term is DMLAT.feature_term is feature_terms.AT
    assert OfflineSP.feature_term is DMLSP.feature_term is feature_terms.SP
    g = torch.Generator().manual_seed(0)
    a, b = [torch.randn(4, 8, 6, 6, generator=g)], [torch.randn(4, 16, 6, 6, generator=g)]
    assert torch.equal(feature_terms.AT(a, b, SimpleNamespace(p=3.0)), at_loss(a, b, 3.0))
    assert not torch.equal(feature_terms.AT(a, b, SimpleNamespace(p=3.0)), at_loss(a, b, 2.0))
    e, f = torch.randn(6, 5, generator=g), torch.randn(6, 7, generator=g)
    hp = DMLRKD.HParams(distance_weight=2.0, angle_weight=0.0)
    assert torch.equal(DMLRKD.feature_term(e, f, hp), rkd_loss(e, f, 2.0, 0.0))
    features = SimpleNamespace(stages=["s1", "s2", "s3"], blocks=["s2", "s3"], embedding="e")
    assert (feature_terms.SP.select(features), feature_terms.AT.select(features),
            feature_terms.PKT.select(features)) == ("s3", ["s2", "s3"], "e")

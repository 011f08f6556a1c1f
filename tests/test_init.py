"""The initial values of every scheme, as the official code draws them."""

import pytest
import torch

import ligo_fast
from ligo_fast.config import DEPTH_INITS, WIDTH_INITS
from ligo_fast.init import depth_init, width_init


def test_depth_rows_sum_to_one_for_every_scheme():
    for scheme in DEPTH_INITS:
        w = depth_init(6, 4, scheme, 0.03)
        assert w.shape == (6, 4)
        torch.testing.assert_close(w.sum(-1), torch.ones(6))
        assert (w >= 0).all()


@pytest.mark.parametrize("scheme, index", [("stackbert", lambda l: l % 3), ("interlace", lambda l: l // 2)])
def test_one_hot_depth_schemes(scheme, index):
    w = depth_init(5, 3, scheme, 0.03)
    expect = torch.zeros(5, 3)
    expect[torch.arange(5), torch.tensor([index(l) for l in range(5)])] = 1
    assert torch.equal(w, expect)
    noisy = depth_init(5, 3, scheme + "_noisy", 0.03)
    assert torch.equal(noisy.argmax(-1), expect.argmax(-1))
    ratio = noisy / noisy[expect == 1][:, None]  # undo the normalisation: the one-hot entry was 1
    off = ratio[expect == 0]
    assert (off >= 0).all() and (off < 0.03).all() and (off > 0).any()
    torch.testing.assert_close(noisy.sum(-1), torch.ones(5))


def test_rand_depth_schemes_are_random_and_softmax_is_flat():
    a, b = depth_init(4, 6, "rand", 0), depth_init(4, 6, "rand", 0)
    assert not torch.equal(a, b)
    s = depth_init(4, 6, "rand_softmax", 0)
    assert (s > 1 / 6 / torch.e).all() and (s < torch.e / 6).all()  # softmax of values in [0, 1)


def test_width_schemes():
    r = width_init(7, 5, "rand", 0.03)
    assert r.shape == (7, 5)
    torch.testing.assert_close(r.sum(-1), torch.ones(7))
    torch.testing.assert_close(width_init(7, 5, "rand_softmax", 0).sum(-1), torch.ones(7))
    sel = width_init(40, 5, "sel", 0.03)
    assert torch.equal(sel.sum(-1), torch.ones(40)) and set(sel.unique().tolist()) == {0.0, 1.0}
    assert len(set(sel.argmax(-1).tolist())) > 1
    noisy = width_init(40, 5, "sel_noisy", 0.03)
    assert torch.equal(noisy.max(-1).values, torch.ones(40))  # chosen entry set to 1, no renormalisation
    rest = noisy[noisy != 1]
    assert (rest >= 0).all() and (rest < 0.03).all() and (rest > 0).all()
    assert set(WIDTH_INITS) >= {"rand", "rand_softmax", "sel", "sel_noisy"}


def test_interlace_rejects_more_than_twice_the_layers():
    with pytest.raises(ValueError, match="at most 6 layers, not 7"):
        depth_init(7, 3, "interlace", 0.03)


def test_unknown_schemes_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid schemes: rand, rand_softmax, stackbert"):
        ligo_fast.LiGOConfig(depth_init="stack")
    with pytest.raises(ValueError, match="sel_noisy"):
        ligo_fast.LiGOConfig(width_init="stackbert")
    with pytest.raises(TypeError, match="unknown LiGOConfig option"):
        ligo_fast.LiGOConfig().replace(depth="rand")


def test_seed_makes_the_operator_reproducible():
    from _models import build, configs

    small_cfg, large_cfg = configs("BertForMaskedLM")
    small = build("BertForMaskedLM", small_cfg)
    a = ligo_fast.grow(small, large_cfg, seed=3, depth_init="rand").state_dict()
    b = ligo_fast.grow(small, large_cfg, seed=3, depth_init="rand").state_dict()
    c = ligo_fast.grow(small, large_cfg, seed=4, depth_init="rand").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)

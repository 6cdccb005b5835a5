"""EAOA: its scores and query rule on hand-worked cases, the reverse-neighbour counts against a
direct count and their frequency weighting by hand, the energy loss by hand, the adaptive k, and the
strategy on separable embeddings."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mqnet_fast.strategies import make_strategy
from mqnet_fast.strategies import eaoa
from mqnet_fast.strategies.eaoa import (aleatoric, data_epistemic, eaoa_query, energy_loss, frequency_weighted,
                                        learned_epistemic, neighbour_counts)
from test_lfosa import _view


def test_scores_by_hand():
    assert torch.allclose(aleatoric(torch.tensor([[0.0, math.log(3.0)]])), torch.tensor([math.log(0.25)],
                                                                                          dtype=torch.float64))
    assert torch.allclose(learned_epistemic(torch.zeros(1, 3)), torch.zeros(1, dtype=torch.float64))  # -ln2 + ln2
    counts = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    want = [-math.log(math.exp(2) + 1) + math.log(2), -math.log(2) + math.log(1 + math.exp(3))]  # softplus(0) = ln 2
    assert np.allclose(data_epistemic(counts).numpy(), want)


def test_neighbour_counts_by_hand_and_against_a_direct_count():
    labeled = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    counts = neighbour_counts(labeled, candidates, torch.tensor([0, 1]), 2, neighbours=2)
    assert counts.tolist() == [[1, 0], [1, 1], [0, 1], [0, 0]]
    g = torch.Generator().manual_seed(0)
    labeled, candidates = torch.randn(600, 5, generator=g), torch.randn(90, 5, generator=g)
    groups = torch.randint(0, 3, (600,), generator=g)
    got = neighbour_counts(labeled, candidates, groups, 3, neighbours=7)
    sim = F.normalize(labeled.double(), dim=1) @ F.normalize(candidates.double(), dim=1).T
    want = torch.zeros(90, 3, dtype=torch.float64)
    for i in range(600):
        for j in sim[i].argsort(descending=True)[:7]:
            want[j, groups[i]] += 1
    assert torch.equal(got, want)
    assert neighbour_counts(labeled, candidates, groups, 3, neighbours=500).sum(0).tolist() == \
        torch.bincount(groups, minlength=3).mul(90).tolist()  # more neighbours than candidates: all of them


def test_frequency_weighted_counts_by_hand():
    # K = 2; labeled: 2 of class 0, 4 of class 1, 6 OOD. The mean IN class holds 3, so the columns are
    # divided by 2/3, 4/3 and 6/3: each count times 3 over its group's size.
    groups = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    counts = torch.tensor([[2.0, 4.0, 6.0], [1.0, 0.0, 0.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    want = torch.tensor([[3.0, 3.0, 3.0], [1.5, 0.0, 0.0], [0.0, 0.75, 1.5]], dtype=torch.float64)
    torch.testing.assert_close(frequency_weighted(counts, groups), want)
    # raw, row 0's 6 OOD neighbours outweigh its 2 + 4 IN ones and its EU2 exceeds row 2's; weighted,
    # row 0 is as near the IN classes as the OOD (3, 3, 3) and its EU2 falls below row 2's (0, .75, 1.5)
    raw, weighted = data_epistemic(counts), data_epistemic(want)
    assert raw[0] > raw[2] and weighted[0] < weighted[2]
    assert float(weighted[0]) == pytest.approx(-(3 + math.log(2)) + math.log(1 + math.exp(3)))
    # class 1 has no labeled example: its column stays (0); the mean IN class holds 1
    torch.testing.assert_close(frequency_weighted(torch.tensor([[2.0, 0.0, 4.0]], dtype=torch.float64),
                                                  torch.tensor([0, 0, 2, 2])),
                               torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64))
    # no labeled IN example: the counts as they are
    only_ood = torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(frequency_weighted(only_ood, torch.tensor([2, 2])), only_ood)


@pytest.mark.parametrize("counts", ["raw", "frequency"])
def test_the_strategy_uses_eaoa_counts(counts, monkeypatch):
    seen = {}

    def recorded(labeled, candidates, groups, num_groups, neighbours):
        seen["counts"], seen["groups"] = neighbour_counts(labeled, candidates, groups, num_groups, neighbours), groups
        return seen["counts"].clone()

    monkeypatch.setattr(eaoa, "neighbour_counts", recorded)
    view, kind = _view()
    keep = ~((view.labeled_labels == 0) & (view.labeled >= 15))  # labeled: 5 of class 0, 10 of class 1, 10 OOD
    view = dataclasses.replace(view, labeled=view.labeled[keep], labeled_labels=view.labeled_labels[keep],
                               labeled_is_in=view.labeled_is_in[keep], labeled_feats=view.labeled_feats[keep])
    eu2 = make_strategy("eaoa", eaoa_counts=counts).select(view, 10).columns["eaoa_eu2"]
    raw = data_epistemic(seen["counts"])
    weighted = data_epistemic(frequency_weighted(seen["counts"], seen["groups"]))
    assert not torch.allclose(raw.float(), weighted.float())  # the case tells them apart
    torch.testing.assert_close(eu2, (raw if counts == "raw" else weighted).float())


def test_energy_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0, 5.0], [30.0, 0.0, 0.0]])  # row 0 OOD (class 2), row 1 IN class 0
    targets = torch.tensor([2, 0])
    e_ood = -math.log(2.0)  # -logsumexp(0, 0)
    e_in = -(30.0 + math.log(1 + math.exp(-30.0)))
    margin = max(e_in + 25.0, 0) ** 2 + max(-7.0 - e_ood, 0) ** 2  # 0 + 0: IN below -25, OOD above -7
    want = F.cross_entropy(logits, targets).item() + 0.5 * margin
    assert energy_loss(logits, targets, 0.5).item() == pytest.approx(want)
    hot = torch.tensor([[0.0, 0.0, 5.0], [3.0, 0.0, 0.0]])  # the IN row's energy -3.05 is above -25
    e_in = -(3.0 + math.log(1 + math.exp(-3.0)))
    want = F.cross_entropy(hot, targets).item() + 0.5 * (e_in + 25.0) ** 2
    assert energy_loss(hot, targets, 0.5).item() == pytest.approx(want, rel=1e-6)
    only_in = energy_loss(hot[1:], targets[1:], 0.5).item()  # no OOD in the batch: its term is absent
    assert only_in == pytest.approx(F.cross_entropy(hot[1:], targets[1:]).item() + 0.5 * (e_in + 25.0) ** 2, rel=1e-6)


def test_query_rule_by_hand():
    predicted = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    clean = np.array([0.9, 0.8, 0.7, 0.1, 0.6, 0.5, 0.4, 0.3])
    info = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.1, 0.9, 0.5])
    g = torch.Generator().manual_seed(0)
    # b = 4, n = 2, k = 2: class 0's top 4 by clean 0, 1, 2, 4, top 2 by info 2, 4; class 1's 5, 6, 7 -> 6, 7
    assert sorted(eaoa_query(predicted, clean, info, 2, 4, 2, g).tolist()) == [2, 4, 6, 7]
    # k = 1: the top n by clean alone
    assert sorted(eaoa_query(predicted, clean, info, 2, 4, 1, g).tolist()) == [0, 1, 5, 6]
    # b = 3: n = 2 per class, 4 shuffled, 3 kept: a subset of the 4
    picked = eaoa_query(predicted, clean, info, 2, 3, 2, g)
    assert len(picked) == 3 and set(picked.tolist()) <= {2, 4, 6, 7}
    # no candidate predicted as class 1: class 0 gives n = 2, the rest by clean
    only0 = np.zeros(8, np.int64)
    assert sorted(eaoa_query(only0, clean, info, 2, 4, 1, g).tolist()) == [0, 1, 2, 4]


def test_k_adapts_to_the_last_precision():
    view, kind = _view()
    strategy = make_strategy("eaoa")
    in_rows = view.labeled[view.labeled_is_in].tolist()
    ood_rows = view.labeled[~view.labeled_is_in].tolist()
    for query, k in ((in_rows[:5], 6), (in_rows[:3] + ood_rows[:2], 6), (ood_rows[:5], 5), (ood_rows[:5], 4)):
        strategy.last_query = sorted(query)  # precision 1, 0.6, 0, 0
        strategy._adapt(view)
        assert strategy.k == k
    strategy.k = 1
    strategy.last_query = ood_rows[:2]
    strategy._adapt(view)
    assert strategy.k == 1


def test_strategy_on_separable_embeddings():
    view, kind = _view()
    strategy = make_strategy("eaoa")
    selection = strategy.select(view, 40)
    picked = selection.indices
    assert len(set(picked.tolist())) == 40 and np.isin(picked.numpy(), view.candidates.numpy()).all()
    assert (kind[picked] < 2).float().mean() >= 0.9  # clean keeps the OOD cluster out
    assert strategy.last_query == sorted(picked.tolist()) and selection.extra["eaoa_k"] == 5
    assert set(selection.columns) == {"eaoa_au", "eaoa_eu1", "eaoa_eu2", "eaoa_clean", "eaoa_info"}
    again = make_strategy("eaoa")
    again.load_state_dict(strategy.state_dict())
    assert again.k == strategy.k and again.last_query == strategy.last_query
    assert make_strategy("eaoa").select(_view()[0], 40).indices.tolist() == picked.tolist()
    for bad, match in ((dict(eaoa_k=0), "eaoa_k"), (dict(eaoa_target_precision=2.0), "eaoa_target_precision"),
                       (dict(eaoa_energy_weight=-1.0), "eaoa_energy_weight"),
                       (dict(eaoa_neighbours=0), "eaoa_neighbours"), (dict(eaoa_counts="log"), "eaoa_counts.*'log'")):
        with pytest.raises(ValueError, match=match):
            make_strategy("eaoa", **bad)

"""The labeled set: hand-worked rows, answers, inputs and budgets; every misuse refused by name; a
strategy run through it picks what it picks on the arrays sliced by hand."""
import numpy as np
import pytest
import torch

import mqnet_fast
from mqnet_fast.labeled import LabeledSet


def test_rows_answers_and_candidates_by_hand():
    pool = LabeledSet(8, [5, 1], is_in=[False, True])
    assert pool.labeled.tolist() == [1, 5] and pool.is_in.tolist() == [True, False]  # sorted with their answers
    assert pool.labeled_in.tolist() == [1] and pool.unlabeled.tolist() == [0, 2, 3, 4, 6, 7] and len(pool) == 2
    assert pool.labelled_map.tolist() == [False, True, False, False, False, True, False, False]
    pool.label(np.array([7, 0]), is_in=torch.tensor([True, False]))
    assert pool.labeled.tolist() == [0, 1, 5, 7] and pool.is_in.tolist() == [False, True, False, True]
    assert pool.rows([0, 2]).tolist() == [2, 4]  # positions among the candidates [2, 3, 4, 6]
    again = LabeledSet.from_state_dict(pool.state_dict())
    assert again.labeled.tolist() == pool.labeled.tolist() and again.is_in.tolist() == pool.is_in.tolist()
    assert pool.check_budget(4) == 4


@pytest.mark.parametrize("rows, is_in", [([], None), ([], []), (np.zeros(0, np.int64), np.zeros(0, bool))])
@pytest.mark.parametrize("keeps", [False, True])
def test_labeling_no_rows_changes_nothing(rows, is_in, keeps):
    """An empty query (a list, or arrays of 0 rows) is a no-op, with or without answers, whether the
    set keeps them or not (an empty answer list on a set without answers raised IndexError)."""
    pool = LabeledSet(6, [1, 4], is_in=[True, False] if keeps else None)
    pool.label(rows, is_in=is_in)
    assert pool.labeled.tolist() == [1, 4]
    assert (pool.is_in.tolist() == [True, False]) if keeps else pool.is_in is None


def test_a_pool_inside_a_larger_set_of_rows():
    pool = LabeledSet(10, [2], is_in=[True], pool=[1, 2, 4, 8])
    assert pool.unlabeled.tolist() == [1, 4, 8] and pool.check_budget(3) == 3
    with pytest.raises(ValueError, match="the query: rows \\[3\\] are not in the pool"):
        pool.label([3], is_in=[True], name="the query")


@pytest.mark.parametrize("call, exc, message", [
    (lambda: LabeledSet(5, [1, 1]), ValueError, "labeled lists a row twice"),
    (lambda: LabeledSet(5, [7]), IndexError, "labeled holds an index out of range \\[0, 5\\)"),
    (lambda: LabeledSet(5, [1.5]), TypeError, "labeled must be an integer tensor"),
    (lambda: LabeledSet(5, [1], is_in=[True, False]), ValueError, "one flag per labeled row \\(1\\)"),
    (lambda: LabeledSet(5, [1], is_in=[2]), TypeError, "is_in must be bool"),
    (lambda: LabeledSet(5, [1], is_in=[True]).label([2]), ValueError, "is_in must be given for every labeled row"),
    (lambda: LabeledSet(5, [1]).label([2], is_in=[True]), ValueError, "is_in must be given for every labeled row"),
    (lambda: LabeledSet(5, [1]).label([1]), ValueError, "rows \\[1\\] are labeled already"),
    (lambda: LabeledSet(5, [1]).labeled_in, ValueError, "is_in was not given"),
    (lambda: LabeledSet(5, [1]).check_budget(5), ValueError, "budget \\(5\\) exceeds the 4 unlabeled rows"),
    (lambda: LabeledSet(5, [1]).check_budget(0), ValueError, "budget must be >= 1"),
    (lambda: LabeledSet(5, pool=[3, 1]), ValueError, "pool must be sorted distinct rows"),
    (lambda: LabeledSet(5).inputs(feats=np.zeros((4, 2))), ValueError, "feats must have one row per row \\(5\\)"),
    (lambda: LabeledSet(5).inputs(labeled_feats=np.zeros((4, 2))), TypeError, "unknown input\\(s\\) labeled_feats"),
])
def test_misuse_is_refused_by_name(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_inputs_are_the_arrays_sliced_by_hand_and_picks_map_back():
    g = torch.Generator().manual_seed(0)
    feats, logits = torch.randn(40, 6, generator=g), torch.randn(40, 3, generator=g)
    first = torch.tensor([3, 17, 8, 30])
    is_in = torch.tensor([True, False, True, True])
    pool = LabeledSet(40, first, is_in=is_in)
    inputs = pool.inputs(feats=feats, logits=logits)
    candidates = torch.from_numpy(np.setdiff1d(np.arange(40), first.numpy()))
    order = torch.argsort(first)
    assert torch.equal(inputs["feats"], feats[candidates]) and torch.equal(inputs["logits"], logits[candidates])
    assert torch.equal(inputs["labeled_feats"], feats[first[order]])
    assert inputs["labeled_is_in"].tolist() == is_in[order].tolist()
    assert torch.allclose(inputs["labeled_probs"], torch.softmax(logits[first[order]], 1))
    by_hand = mqnet_fast.select("coreset", 5, feats=feats[candidates], labeled_feats=feats[first])
    through = mqnet_fast.select("coreset", 5, **pool.inputs(feats=feats))
    assert torch.equal(through.indices, by_hand.indices)
    assert pool.rows(through.indices).tolist() == candidates[by_hand.indices].tolist()

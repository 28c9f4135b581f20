"""No loss waits for the device: synchronising operators of one forward and backward, counted.

The count runs on the CPU (:func:`tests.utils.sync_count.count_syncs`): the operators that would
make the host wait for an accelerator (scalar reads, data-dependent shapes, ``bincount``) are the
same there. The losses run as on an accelerator (:func:`tests.utils.sync_cases.as_on_accelerator`):
the input checks that read values (run on the CPU only) are switched off, and the ranking losses
(PAP, AP, aLRP, RS) keep fixed shapes (every entry an anchor, the positives a mask) instead of
gathering their positives, as they do on the CPU.

Expected: zero for every loss: the PAP loss (exact and top-k), AP-Loss, aLRP Loss, Rank & Sort
Loss (smoothed and exact step), the Dice loss and the loss-graph branches. The counts are pinned so
that they only go down.
"""

import pytest

from tests.utils.loss_snapshot import loss_cases, ranking_problem
from tests.utils.sync_cases import loss_sync_counts
from tests.utils.sync_count import SYNC_OPS, count_syncs

#: Synchronising operators per forward + backward, at most.
EXPECTED = {
    "pap_identity": 0,
    "pap_published": 0,
    "pap_topk": 0,
    "pap_topk_all": 0,
    "dice": 0,
    "graph_cls": 0,
    "graph_box": 0,
    "ap": 0,
    "alrp": 0,
    "rs": 0,
    "rs_exact_step": 0,
}


@pytest.fixture(scope="module")
def counts():
    return loss_sync_counts()


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_loss_synchronises_at_most_its_pinned_count(counts, case):
    assert counts[case] <= EXPECTED[case]


def test_every_loss_is_counted(counts):
    assert set(counts) == set(EXPECTED)


def test_without_positives_no_loss_synchronises():
    no_positives = loss_sync_counts(num_positives=0)
    assert all(no_positives[name] == 0 for name in EXPECTED if EXPECTED[name] == 0)


@pytest.mark.parametrize("case", ["pap_identity", "pap_published", "pap_topk", "pap_topk_all"])
def test_on_the_cpu_pap_gathers_its_positives(case, monkeypatch):
    """Outside ``as_on_accelerator``, CPU tensors take the positives as the anchors of the PAP
    sums (:data:`paploss.losses._devices.INDEXED_DEVICES`): one ``nonzero``, and one scalar read
    (whether every entry is in the sums), both free on the CPU, instead of every entry as an
    anchor. The counts above are of the fixed-shape way of accelerators."""
    from paploss.losses import _checks

    monkeypatch.setattr(_checks, "VALUE_CHECK_DEVICES", ())  # only the loss itself is counted
    logits, targets, quality = ranking_problem()
    s = logits.clone().requires_grad_(True)
    q = quality.clone().requires_grad_(True)
    fn = loss_cases()[case]
    counts = count_syncs(lambda: fn(s, targets, q).backward())
    expected = {"aten::nonzero": 1, "aten::_local_scalar_dense": 1}
    assert counts == {name: expected.get(name, 0) for name in SYNC_OPS}

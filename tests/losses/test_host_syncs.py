"""No loss waits for the device: synchronising operators of one forward and backward, counted.

The count runs on the CPU (:func:`tests.utils.sync_count.count_syncs`): the operators that would
make the host wait for an accelerator (scalar reads, data-dependent shapes, ``bincount``) are the
same there. The losses run as on an accelerator (:func:`tests.utils.sync_cases.as_on_accelerator`):
the input checks that read values (run on the CPU only) are switched off, and the PAP loss keeps
fixed shapes (every entry an anchor) instead of gathering its positives, as it does on the CPU.

Expected: zero for the PAP loss (exact and top-k), the Dice loss and the loss-graph branches.
AP-Loss, aLRP Loss and Rank & Sort Loss are not free yet, and their counts are pinned so that
they only go down: they gather the positives with ``nonzero`` (their O(P log P + M) cost needs
P-sized tensors), locate the entries among the positives' breakpoints with a bucket search that
reads the breakpoints' span and the fullest bucket on the host, and histogram with ``bincount``;
aLRP also gathers the positives for its localisation term, and RS follows its wavelet-matrix
queries with ``nonzero``.
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
    "ap": 6,
    "alrp": 7,
    "rs": 8,
    "rs_exact_step": 8,
}


@pytest.fixture(scope="module")
def counts():
    return loss_sync_counts()


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_loss_synchronises_at_most_its_pinned_count(counts, case):
    assert counts[case] <= EXPECTED[case]


def test_every_loss_is_counted(counts):
    assert set(counts) == set(EXPECTED)


def test_without_positives_pap_needs_no_synchronisation():
    no_positives = loss_sync_counts(num_positives=0)
    assert all(no_positives[name] == 0 for name in EXPECTED if EXPECTED[name] == 0)


@pytest.mark.parametrize("case", ["pap_identity", "pap_published", "pap_topk", "pap_topk_all"])
def test_on_the_cpu_pap_gathers_its_positives(case, monkeypatch):
    """Outside ``as_on_accelerator``, CPU tensors take the positives as the anchors of the PAP
    sums (:data:`paploss.losses.pap.INDEXED_DEVICES`): one ``nonzero``, and one scalar read
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

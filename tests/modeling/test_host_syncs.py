"""What the heads' loss computations make the host wait for, counted on a fixed batch.

The count (:func:`tests.utils.sync_cases.head_sync_counts`) covers each head's ``losses()`` on
a fixed synthetic batch and the backward of the model's losses, on the CPU with the value checks
of the loss inputs off, as on an accelerator (see ``tests/losses/test_host_syncs.py``).

Justified minimum per call of ``losses()`` with any ranking loss (PAP, AP, aLRP, RS), 3:

* 2 ``nonzero``: :class:`~paploss.modeling.ranking.HeadRanking` holds the positives' boxes
  (and masks) as ``[P, ...]`` tensors in label order, the interface of every head loss, of the
  screening and of the projects; ``P`` is read on the host once when the positives' deltas are
  gathered and once when the ranking checks them.
* 1 ``_local_scalar_dense``: the scalars the head logs (the loss's parts, and for the RPN its
  number of negatives) are read in one transfer per call.

The losses themselves add none (``tests/losses/test_host_syncs.py``), so the AP, aLRP and RS heads
count as many as the PAP heads. The ROI heads count more than the minimum with every loss (5
without masks): the rest comes from the code around the loss, for a Mask R-CNN also Detectron2's
own mask-target code (``crop_and_resize`` and the per-image selection of positives). RS Mask
R-CNN's ROI head, with its own proposal settings, counts 4 more than PAP Mask R-CNN's on this
batch. The graph loss's ROI head also filters its ignored RoIs by boolean indexing (forward and
backward), and its RPN is Detectron2's stock one. The counts are pinned so that they only go down.
"""

import itertools
import random

import numpy as np
import pytest
import torch
from detectron2.data import build_detection_train_loader

from tests.utils.sync_cases import head_sync_counts

from .utils import make_cfg

#: config -> {counted call: synchronising operators, at most}.
EXPECTED = {
    "pap_retinanet_identity": {"PAPRetinaNet.losses": 3, "backward": 0},
    "pap_retinanet_published": {"PAPRetinaNet.losses": 3, "backward": 0},
    "ap_retinanet": {"PAPRetinaNet.losses": 3, "backward": 0},
    "alrp_retinanet": {"PAPRetinaNet.losses": 3, "backward": 0},
    "rs_retinanet": {"PAPRetinaNet.losses": 3, "backward": 0},
    "pap_faster_rcnn_identity": {
        "PAPRPN.losses": 3,
        "PAPFastRCNNOutputLayers.losses": 5,
        "backward": 0,
    },
    "pap_faster_rcnn_published": {
        "PAPRPN.losses": 3,
        "PAPFastRCNNOutputLayers.losses": 5,
        "backward": 0,
    },
    "ap_faster_rcnn": {"PAPRPN.losses": 3, "PAPFastRCNNOutputLayers.losses": 5, "backward": 0},
    "alrp_faster_rcnn": {"PAPRPN.losses": 3, "PAPFastRCNNOutputLayers.losses": 5, "backward": 0},
    "rs_faster_rcnn": {"PAPRPN.losses": 3, "PAPFastRCNNOutputLayers.losses": 5, "backward": 0},
    "graph_faster_rcnn": {"RPN.losses": 10, "PAPFastRCNNOutputLayers.losses": 7, "backward": 3},
    "pap_mask_rcnn": {"PAPRPN.losses": 3, "PAPFastRCNNOutputLayers.losses": 14, "backward": 0},
    "pap_mask_rcnn_mask_iou": {
        "PAPRPN.losses": 3,
        "PAPFastRCNNOutputLayers.losses": 14,
        "backward": 0,
    },
    "rs_mask_rcnn": {"PAPRPN.losses": 3, "PAPFastRCNNOutputLayers.losses": 18, "backward": 0},
}


def _batch_of(config):
    cfg = make_cfg(f"configs/synthetic/{config}.yaml")
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return next(itertools.islice(iter(build_detection_train_loader(cfg)), 1))


@pytest.fixture(scope="module")
def counts():
    return head_sync_counts(_batch_of)


@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_head_losses_synchronise_at_most_their_pinned_counts(counts, config):
    assert set(counts[config]) == set(EXPECTED[config])
    for call, count in counts[config].items():
        assert count <= EXPECTED[config][call], call

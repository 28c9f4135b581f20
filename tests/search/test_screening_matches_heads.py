"""The screen scores exactly what a head trains with: the same ranking, loss value and gradients.

For every head (RetinaNet, RPN, ROI head) and every ranking loss, the model of the candidate's
config trains one step on the screening's images with the screening's seed; what the head ranks
there is compared with the screening batch, and the loss the screen computes for the candidate on
that batch (``RejectionProtocol.loss``: the head loss's own ``compute`` on the ranking rebuilt
from the screen's leaf tensors) with the head's training loss, in value and in gradient with
respect to the logits and the box deltas.
"""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from paploss.engine import setup_cfg
from paploss.losses import PAPFunctions
from paploss.modeling import PAP_HEADS, build_head_loss, record_rankings
from paploss.search.screening import RejectionProtocol, candidate_head_losses
from paploss.search.screening.batch import (
    build_screening_batches,
    load_images,
    screening_model_config,
)
from paploss.search.settings import RejectionSettings

CONFIGS = {
    "RETINANET": "configs/synthetic/pap_retinanet_identity.yaml",
    "RPN": "configs/synthetic/pap_faster_rcnn_identity.yaml",
    "ROI_HEADS": "configs/synthetic/pap_faster_rcnn_identity.yaml",
}
LOSS_KEYS = {"RETINANET": "loss_{}", "RPN": "loss_rpn_{}", "ROI_HEADS": "loss_roi_{}"}
PUBLISHED = {"RETINANET": "retinanet", "RPN": "faster_rcnn_rpn", "ROI_HEADS": "faster_rcnn_roi"}
SEARCH_TRAIN = "synthetic_shapes_search_train"
NUM_IMAGES, SEED = 2, 3
LOSSES = ("pap", "ap", "alrp", "rs")


def _candidate(head):
    """A candidate far from the identity: the published functions and λ = 2.5."""
    functions = PAPFunctions.published(PUBLISHED[head]).to_dict()
    overrides = {f"MODEL.PAPLOSS.{head}.FUNCTIONS.{k}": v for k, v in functions.items()}
    overrides[f"MODEL.PAPLOSS.{head}.GRAD_SCALE"] = 2.5
    return overrides


@pytest.fixture(scope="module")
def screening_batches():
    """Config file → the screening batches of its model (built once, as a search does)."""
    torch.set_num_threads(1)
    batches = {}
    for config in sorted(set(CONFIGS.values())):
        batches[config] = build_screening_batches(
            setup_cfg(config), dataset=SEARCH_TRAIN, num_images=NUM_IMAGES, seed=SEED
        )
    return batches


@pytest.fixture(scope="module")
def training_steps():
    """(config file, loss) → what every head ranked and the losses of one training forward of
    the candidates' model, with the screening's seed and images (filled on demand)."""
    cache = {}

    def run(config, loss):
        if (config, loss) not in cache:
            cfg = screening_model_config(setup_cfg(config))
            cfg.MODEL.PAPLOSS.LOSS = loss
            for head in PAP_HEADS:
                if CONFIGS[head] == config:
                    cfg.merge_from_list([x for kv in _candidate(head).items() for x in kv])
            torch.manual_seed(SEED)  # the screening's seed order: weights, then images
            model = build_model(cfg)
            inputs = load_images(cfg, SEARCH_TRAIN, NUM_IMAGES, SEED)
            model.train()
            with record_rankings(model) as rankings, EventStorage():
                losses = model(inputs)
            cache[config, loss] = (cfg, dict(rankings), losses)
        return cache[config, loss]

    return run


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("head", PAP_HEADS)
def test_screen_and_head_rank_the_same_and_compute_the_same_loss(
    screening_batches, training_steps, head, loss
):
    config = CONFIGS[head]
    batch = screening_batches[config][head]
    cfg, rankings, losses = training_steps(config, loss)
    trained = rankings[head]

    # what the head ranks in training is the screening batch, whatever the loss
    screened = batch.ranking
    assert torch.equal(trained.labels, screened.labels)
    assert torch.equal(trained.positive_rows, screened.positive_rows)
    assert trained.num_positives > 0
    for name in ("logits", "deltas", "reference_boxes", "gt_boxes", "gt_deltas", "image_index"):
        torch.testing.assert_close(getattr(trained, name).detach(), getattr(screened, name))

    # the loss the screen computes on its leaf tensors is the head's training loss
    if loss == "pap":  # what the screening runs: the candidate's head loss from its overrides
        head_loss = candidate_head_losses(setup_cfg(config), _candidate(head), [head])[head]
        assert head_loss.grad_scale == 2.5
    else:  # the other losses go through the same ranking and compute
        head_loss = build_head_loss(cfg, head, head_name=head.lower(), key_prefix="loss_")
    protocol = RejectionProtocol(batch, RejectionSettings())
    logits = screened.logits.clone().requires_grad_(True)
    positive_deltas = screened.pred_deltas.clone().requires_grad_(True)
    screen_loss = protocol.loss(logits, positive_deltas, head_loss)
    screen_grads = torch.autograd.grad(screen_loss, (logits, positive_deltas))

    train_loss = losses[LOSS_KEYS[head].format(loss)]
    train_grads = torch.autograd.grad(train_loss, (trained.logits, trained.deltas))
    torch.testing.assert_close(screen_loss, train_loss.detach(), rtol=1e-6, atol=1e-7)
    assert screen_loss.item() > 0
    torch.testing.assert_close(screen_grads[0], train_grads[0], rtol=1e-5, atol=1e-9)
    rows = screened.positive_rows
    index = (rows,) if screened.deltas.dim() == 2 else (rows, screened.labels[rows])
    torch.testing.assert_close(screen_grads[1], train_grads[1][index], rtol=1e-5, atol=1e-9)
    assert screen_grads[1].abs().sum() > 0
    others = train_grads[1].clone()
    others[index] = 0
    assert not others.any()  # only the positives' deltas get a gradient

"""Dice loss and soft mask IoU against values worked out by hand."""

import pytest
import torch

from paploss.losses import DICE_EPS, dice_loss, soft_mask_iou

PROBS = torch.tensor([[[0.5, 1.0], [0.0, 0.25]], [[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
TARGETS = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])


def test_dice_loss_by_hand():
    # mask 0: Σpt = 0.5 + 1 = 1.5, Σp² = 0.25 + 1 + 0.0625 = 1.3125, Σt² = 2
    # mask 1: no overlap, Σp² = 1, Σt² = 0: the loss is 1
    expected = torch.tensor([1 - 3.0 / (3.3125 + DICE_EPS), 1.0], dtype=torch.float64)
    torch.testing.assert_close(dice_loss(PROBS, TARGETS), expected, rtol=1e-12, atol=1e-12)
    # a perfect binary prediction scores (almost exactly) 0
    binary = TARGETS[:1].double()
    assert dice_loss(binary, binary).item() == pytest.approx(0.0, abs=1e-5)


def test_soft_mask_iou_by_hand_and_equals_the_iou_of_binary_masks():
    # mask 0: 1.5 / (1.75 + 2 - 1.5); mask 1: 0 / (1 + 0 - 0)
    expected = torch.tensor([1.5 / 2.25, 0.0], dtype=torch.float64)
    torch.testing.assert_close(soft_mask_iou(PROBS, TARGETS), expected, rtol=1e-6, atol=1e-9)
    a = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    b = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    assert soft_mask_iou(a, b).item() == pytest.approx(2 / 5)  # 2 shared of 5 covered pixels


def test_gradients_are_the_derivatives_and_empty_batches_work():
    probs = PROBS.clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda p: dice_loss(p, TARGETS), (probs,))
    torch.autograd.gradcheck(lambda p: soft_mask_iou(p, TARGETS), (probs,))
    empty = torch.zeros((0, 28, 28), requires_grad=True)
    assert dice_loss(empty, empty.detach()).shape == soft_mask_iou(empty, empty.detach()).shape
    dice_loss(empty, empty.detach()).sum().backward()
    assert empty.grad.shape == empty.shape


def test_shapes_must_match():
    with pytest.raises(ValueError, match=r"same shape \[P, M, M\]"):
        dice_loss(PROBS, TARGETS[:, 0])

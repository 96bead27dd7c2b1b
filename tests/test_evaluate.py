"""ACC and ASR against a tiny model whose predictions are known by construction."""

import pytest
import torch
from torch import nn

from bdprune.data import ImageSet
from bdprune.evaluate import attack_success_rate, evaluate_model
from bdprune.triggers import parse_trigger


class BrightCorner(nn.Module):
    """Predicts class 7 when the bottom-right pixel is bright, else the label encoded in pixel (0, 0)."""

    def forward(self, x):
        label = (x[:, 0, 0, 0] * 10).round().long().clamp(0, 9)
        label = torch.where(x[:, 0, -2, -2] > 0.5, torch.full_like(label, 7), label)
        return nn.functional.one_hot(label, 10).float()


def test_acc_and_asr_by_hand(tmp_path):
    labels = torch.tensor([0, 1, 2, 3, 7, 7, 4, 5])
    images = torch.zeros(8, 1, 6, 6)
    images[:, 0, 0, 0] = labels.float() / 10
    images[6, 0, 0, 0] = 0.9  # a mistake: predicts 9 for label 4
    clean = ImageSet(images, labels, tmp_path / "clean.npz")
    trigger = parse_trigger("patch:size=1,pos=br,margin=1")
    result = evaluate_model(BrightCorner(), clean, checkpoint="m", target=7, trigger=trigger, device=torch.device("cpu"))
    assert result.acc == pytest.approx(100 * 7 / 8)
    assert result.asr == pytest.approx(100.0) and result.n_triggered == 6  # the two label-7 images are left out


def test_asr_counts_only_non_target_when_known():
    preds = torch.tensor([7, 7, 1, 7])
    assert attack_success_rate(preds, 7, torch.tensor([7, 2, 3, 4])) == (pytest.approx(100 * 2 / 3), 3)
    assert attack_success_rate(preds, 7) == (pytest.approx(75.0), 4)

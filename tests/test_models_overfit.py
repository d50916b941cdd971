"""A tiny MST-Net learns 4 synthetic patients (segmentation of a blob, growth = malignancy)."""

from __future__ import annotations

import os

import pytest
import torch

from mstnet.models import build_mstnet, mstnet_config
from mstnet.models.losses import MultiTaskLoss

SLOW = pytest.mark.skipif(os.environ.get("MSTNET_SLOW") != "1", reason="slow; set MSTNET_SLOW=1")


def synthetic_patients(size=(8, 32, 32), seed=0):
    """4 patients x 2 time points: a bright ellipsoid blob in noise. Patients 1 and 3 grow
    (radius x1.6 from T0 to T1, label 1); patients 0 and 2 stay the same size (label 0)."""
    generator = torch.Generator().manual_seed(seed)
    depth, height, width = size
    z, y, x = torch.meshgrid(torch.arange(depth), torch.arange(height), torch.arange(width), indexing="ij")
    images = torch.zeros(4, 2, 1, *size)
    masks = torch.zeros(4, 2, 1, *size)
    labels = torch.tensor([0, 1, 0, 1])
    for patient, base in enumerate([3.0, 2.5, 4.0, 3.0]):
        cz, cy, cx = depth / 2, 10 + 4 * patient, 12 + 2 * patient
        for t in range(2):
            radius = base * (1.6 if labels[patient] and t == 1 else 1.0)
            inside = ((z - cz) / (radius / 2)) ** 2 + ((y - cy) / radius) ** 2 + ((x - cx) / radius) ** 2 <= 1
            masks[patient, t, 0] = inside.float()
            images[patient, t, 0] = inside.float() + 0.2 * torch.randn(size, generator=generator)
    categorical = torch.zeros(4, 2, dtype=torch.long)
    days = torch.tensor([[0.0, 365.0]]).repeat(4, 1)
    return images, masks, labels, categorical, days


def hard_dice(logits, masks):
    prediction = logits > 0
    truth = masks > 0.5
    overlap = (prediction & truth).flatten(2).sum(-1).float()
    return (2 * overlap / (prediction.flatten(2).sum(-1) + truth.flatten(2).sum(-1)).float()).mean()


def train(steps, seed=0):
    torch.manual_seed(seed)
    config = mstnet_config("tiny")
    model = build_mstnet(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = MultiTaskLoss(0.7, 0.3)
    images, masks, labels, categorical, days = synthetic_patients()
    has_mask = torch.ones(4, dtype=torch.bool)
    losses = []
    for _ in range(steps):
        output = model(images, categorical, days=days)
        loss, _ = loss_fn(output, masks, labels, has_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        output = model(images, categorical, days=days)
    accuracy = float((output.cls_logits.argmax(1) == labels).float().mean())
    return losses, float(hard_dice(output.seg_logits[:, :, 0], masks[:, :, 0])), accuracy


def test_synthetic_patients_have_growth_labels():
    _, masks, labels, _, _ = synthetic_patients()
    volumes = masks.flatten(2).sum(-1)
    assert torch.equal((volumes[:, 1] > 1.5 * volumes[:, 0]).long(), labels)


def test_training_loss_falls_fast():
    losses, _, _ = train(steps=25)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


@SLOW
def test_tiny_model_overfits_four_patients():
    losses, dice, accuracy = train(steps=300)
    assert dice > 0.9, (dice, losses[-5:])
    assert accuracy == 1.0, (accuracy, losses[-5:])

"""Train the demo classifier on MNIST digits with a fixed split.

The 10,000-digit file is split by position (it is already shuffled with a fixed seed):
images 0–7,999 are the fit split — 0–5,999 train the classifier, 6,000–7,999 fit the
detector H (clean features, challenge generation, threshold calibration) — and
8,000–9,999 are the test split, never used in any fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from detectors.demo.model import MnistCNN

CLASSIFIER_FIT = slice(0, 6000)
DETECTOR_FIT = slice(6000, 8000)
TEST = slice(8000, 10000)


@dataclass(frozen=True)
class MnistSplit:
    """images float32 [N, 1, 28, 28] in [0, 1]; labels int64 [N]."""

    images: np.ndarray
    labels: np.ndarray


def load_mnist_npz(path: str) -> dict[str, MnistSplit]:
    """The three fixed splits of an ``images`` uint8 [N, 28, 28] / ``labels`` npz."""
    with np.load(path, allow_pickle=False) as data:
        images = data["images"].astype(np.float32)[:, None] / 255.0
        labels = data["labels"].astype(np.int64)
    if len(images) < TEST.stop:
        raise ValueError(
            f"{path}: need {TEST.stop} digits for the fixed split, found {len(images)}"
        )
    return {
        name: MnistSplit(images[s], labels[s])
        for name, s in (("classifier", CLASSIFIER_FIT), ("detector", DETECTOR_FIT), ("test", TEST))
    }


def train_classifier(
    split: MnistSplit, epochs: int = 6, seed: int = 0, progress: bool = True
) -> MnistCNN:
    """Adam with a step-decayed learning rate; returns the model in eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(split.images), torch.from_numpy(split.labels)
    model = MnistCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    model.train()
    for _ in tqdm(range(epochs), desc="train classifier", disable=not progress):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            # light shift augmentation: the classifier should not be brittle for free
            xb = torch.roll(
                x[idx], shifts=tuple(torch.randint(-2, 3, (2,), generator=gen)), dims=(2, 3)
            )
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


def accuracy(model: torch.nn.Module, split: MnistSplit, batch_size: int = 500) -> float:
    """Top-1 accuracy on a split."""
    correct = 0
    with torch.no_grad():
        for i in range(0, len(split.images), batch_size):
            pred = model(torch.from_numpy(split.images[i : i + batch_size])).argmax(1)
            correct += int((pred.numpy() == split.labels[i : i + batch_size]).sum())
    return correct / len(split.images)

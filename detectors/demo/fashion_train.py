"""Train the Fashion-MNIST demo classifier on a fixed split of the 60,000 training images.

Training images 0–54,999 train the classifier; 55,000–56,999 fit the detector H
(clean features, challenge generation, threshold calibration: 2,000 images, as many as
the MNIST demo's); 57,000–59,999 are held back, used by nothing. The 10,000 test images
are never used in any fit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from detectors.demo.fashion_model import FashionResNet
from detectors.demo.train import MnistSplit, accuracy
from detectors.idx import read_idx

CLASSIFIER_FIT = slice(0, 55_000)
DETECTOR_FIT = slice(55_000, 57_000)
#: Where Debian's dataset-fashion-mnist installs the idx files.
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def load_fashion(root: str | os.PathLike[str] = DEFAULT_DIR) -> dict[str, MnistSplit]:
    """The fixed splits (classifier, detector, test) of the idx files in ``root``.

    Raises FileNotFoundError naming the missing file, ValueError for a malformed one.
    """
    parts = {}
    for part, (images_file, labels_file) in FILES.items():
        paths = [Path(root) / images_file, Path(root) / labels_file]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"Fashion-MNIST file not found: {p}")
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.shape != (len(images),):
            raise ValueError(f"{root}: {part} images {images.shape} vs labels {labels.shape}")
        parts[part] = MnistSplit(
            images.astype(np.float32)[:, None] / 255.0, labels.astype(np.int64)
        )
    train = parts["train"]
    if len(train.images) < DETECTOR_FIT.stop:
        raise ValueError(
            f"{root}: need {DETECTOR_FIT.stop} training images, found {len(train.images)}"
        )
    return {
        "classifier": MnistSplit(train.images[CLASSIFIER_FIT], train.labels[CLASSIFIER_FIT]),
        "detector": MnistSplit(train.images[DETECTOR_FIT], train.labels[DETECTOR_FIT]),
        "test": parts["test"],
    }


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shifts of up to ``pad`` px (zero fill) and horizontal flips: [B,1,28,28]."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def train_classifier(
    split: MnistSplit,
    epochs: int = 15,
    seed: int = 0,
    progress: bool = True,
    monitor: MnistSplit | None = None,
) -> FashionResNet:
    """SGD with Nesterov momentum and a one-cycle learning rate; the model in eval mode.

    monitor: a split whose accuracy is printed after each epoch (progress only).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(split.images), torch.from_numpy(split.labels)
    model = FashionResNet()
    batch = 128
    steps = (len(x) + batch - 1) // batch
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, epochs=epochs, steps_per_epoch=steps
    )
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        bar = tqdm(
            range(0, len(x), batch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress
        )
        for i in bar:
            idx = perm[i : i + batch]
            loss = F.cross_entropy(model(_augment(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if monitor is not None and progress:
            model.eval()
            print(f"epoch {epoch + 1}: accuracy {accuracy(model, monitor):.4f}", flush=True)
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model

"""Small real networks for the loader tests (no postponed annotations: TorchScript must
resolve the class-level buffer annotations)."""

import torch
import torch.nn.functional as F
from torch import nn

from detectors.demo import load_demo_model
from detectors.demo.model import MnistCNN


class ScriptableCNN(MnistCNN):
    """The demo CNN with buffer annotations TorchScript can read (the demo module postpones
    annotations, which ``torch.jit.script`` cannot resolve)."""

    mean: torch.Tensor
    std: torch.Tensor


class LeakyCNN(MnistCNN):
    """Same parameters and buffers as the demo CNN, another forward (leaky head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.features(x).flatten(1)
        return self.fc2(F.leaky_relu(self.fc1(x), 0.5))


def scriptable_demo() -> ScriptableCNN:
    """The committed demo weights in a scriptable module, eval mode."""
    model = ScriptableCNN()
    model.load_state_dict(load_demo_model().state_dict())
    return model.eval()


def build_leaky() -> LeakyCNN:
    """Factory naming the wrong architecture for a demo TorchScript module."""
    return LeakyCNN()


def build_five_classes() -> MnistCNN:
    """Factory whose head has another shape than the demo's."""
    return MnistCNN(num_classes=5)


class OpsNet(nn.Module):
    """Exercises more ONNX ops: Conv with bias, BatchNorm, LeakyRelu, AveragePool, MatMul+Add
    (a Linear on a 4-D input), Sigmoid, and ``view(size(0), -1)`` (Shape, Gather,
    Unsqueeze, Concat, Reshape). Input [B, 1, 28, 28] -> logits [B, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)
        self.proj = nn.Linear(7, 5)
        self.head = nn.Linear(4 * 7 * 5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.leaky_relu(self.bn(self.conv(x)), 0.1))
        x = torch.sigmoid(self.proj(x))
        return self.head(x.view(x.size(0), -1))


def ops_net() -> OpsNet:
    """A seeded OpsNet with non-trivial BatchNorm statistics, eval mode."""
    torch.manual_seed(1)
    model = OpsNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.1, 0.1)
    return model.eval()


def build_broken() -> MnistCNN:
    """A factory whose own code fails."""
    raise RuntimeError("weights server unreachable")

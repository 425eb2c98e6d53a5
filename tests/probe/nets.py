"""Small networks covering every layer type the probe handles, for exactness tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations

from benchmarks.resnet import BasicBlock  # the residual block the cost benchmark uses


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(48, 32),
            nn.Tanh(),
            nn.Linear(32, 16),
            nn.ReLU(),
            nn.Linear(16, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Conv + BatchNorm + in-place ReLU, strided/dilated/grouped/reflect-padded convs, Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 6, 3, padding="same", padding_mode="reflect"),
            nn.ReLU(inplace=True),
        )
        self.conv1d = nn.Conv1d(6, 4, 3, stride=2, padding=1)
        self.bn1d = nn.BatchNorm1d(4)
        self.head = nn.Linear(4 * 8, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)  # [B, 6, 4, 4]
        h = torch.relu_(self.bn1d(self.conv1d(h.flatten(2))))  # [B, 4, 8]
        return self.head(h.flatten(1))


class ResNetTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        )
        self.layers = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))
        self.fc = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))


class NormEmbedNet(nn.Module):
    """Embedding (padding_idx, repeated tokens), LayerNorm, Linear on a sequence, GroupNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8, padding_idx=0)
        self.embed_big = nn.Embedding(3, 4)  # few rows: materialised path
        self.ln = nn.LayerNorm(8)
        self.seq = nn.Linear(8, 6)
        self.gn = nn.GroupNorm(2, 6)
        self.ln2 = nn.LayerNorm([6, 5], elementwise_affine=True)
        self.out = nn.Linear(30 + 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = (x[:, :5].abs() * 7).long() % 20  # [B, 5], repeats and zeros
        small = (x[:, 5:9].abs() * 5).long() % 3  # [B, 4], many repeats
        h = self.seq(self.ln(self.embed(tokens)))  # [B, 5, 6]
        h = self.gn(h.transpose(1, 2))  # [B, 6, 5]
        h = self.ln2(h).flatten(1)  # [B, 30]
        e = self.embed_big(small).sum(1)  # [B, 4]
        return self.out(torch.cat([h + x[:, 9:10], e], dim=1))


class Scale(nn.Module):
    """A parametrised module with no registered rule."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, n))
        self.shift = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain + self.shift.exp()


class NoRuleNet(nn.Module):
    """A custom module, PReLU, a Conv3d and a weight-normalised (parametrised) Linear: no rules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1))
        self.scale = Scale(2 * 3 * 16)
        self.prelu = nn.PReLU(2)
        self.wn = parametrizations.weight_norm(nn.Linear(96, 10))
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv3d(x.unsqueeze(1))  # [B, 2, 3, 4, 4]
        h = self.prelu(h).flatten(1)
        h = self.scale(h)
        return self.fc(torch.tanh(self.wn(h)))


class CountBackward(torch.autograd.Function):
    """Identity that counts how often autograd runs its backward (``CountBackward.calls``)."""

    calls = 0

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        CountBackward.calls += 1
        return grad


class Gated(nn.Module):
    """A module with its own parameter around a child convolution (nested probed layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.gain = nn.Parameter(torch.tensor([0.5, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.gain.view(1, -1, 1, 1)


class TwoTowerNet(nn.Module):
    """Two first layers reading the (normalised) input, one nested in a module with its own
    parameter, a skip from the raw input to the logits, in-place ReLU right after a first
    layer, and counted backward passes between the input and the first layers and between
    the towers and the head."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.other = Gated()
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = CountBackward.apply(x - self.mean)  # preprocessing inside the model
        h = torch.cat([self.relu(self.conv(h)), self.other(h)], dim=1)
        h = CountBackward.apply(self.bn(h).mean(dim=(2, 3)))
        return self.head(h) + x.mean(dim=(1, 2, 3)).unsqueeze(1)


class TokenNet(nn.Module):
    """Raw parameters used directly in forward, as transformers use them: a class token
    expanded to the batch and concatenated, a position embedding added, a layer scale
    multiplied in twice (its per-sample gradients add up before the norm), and a
    channels-last LayerNorm subclass that calls F.layer_norm itself."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 5, 8) * 0.5)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))
        self.norm = ChannelsLastNorm(8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)  # [B, 4, 8]
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), h], dim=1) + self.pos
        h = h + self.scale * torch.nn.functional.gelu(self.mix(self.norm(h)))
        h = h * self.scale.tanh()  # the second use, through an expression of the parameter
        return self.head(h[:, 0])


class ChannelsLastNorm(nn.LayerNorm):
    """A LayerNorm subclass overriding forward (no module rule: the F.layer_norm call is
    what the probe follows)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous())


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial running stats and affine params; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


# name -> (factory, input shape without batch)
NETS = {
    "mlp": (MLP, (3, 4, 4)),
    "cnn_bn_inplace": (SmallCNN, (3, 8, 8)),
    "resnet": (ResNetTiny, (3, 8, 8)),
    "norm_embed": (NormEmbedNet, (10,)),
    "no_rule": (NoRuleNet, (3, 4, 4)),
    "two_tower": (TwoTowerNet, (3, 5, 5)),
    "tokens": (TokenNet, (3, 4, 4)),
}

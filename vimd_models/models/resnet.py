"""ResNet-18/34 (basic blocks), the DFKD-FGVC teacher/student pair, with stage taps."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..registry import register_model
from .common import ModelApi


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class ResNet(ModelApi, nn.Module):
    """torchvision layout and names (conv1, bn1, layer1..4, fc). ``small_stem``: 3x3 stride-1 stem
    without max-pool, for tiny inputs (micro variant)."""
    classifier_name = "fc"

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512),
                 num_classes: int = 1000, in_chans: int = 3, small_stem: bool = False,
                 backend: str | None = None):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"layers and widths must have 4 entries, got {layers}, {widths}")
        self.num_classes, self.num_features, self.backend = num_classes, widths[-1], backend
        if small_stem:
            self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin, red, self.feature_info = widths[0], (1 if small_stem else 4), []
        for s, (n, w) in enumerate(zip(layers, widths)):
            stride = 1 if s == 0 else 2
            red *= stride
            blocks = [BasicBlock(cin if i == 0 else w, w, stride if i == 0 else 1) for i in range(n)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=w, reduction=red, module=f"layer{s + 1}"))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stages(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4:
            raise ValueError(f"x must be (batch, channels, h, w), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for s in range(1, 5):
            for blk in getattr(self, f"layer{s}"):
                x = self.run_block(blk, x)
            outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        return self._stages(x)[-1]

    def forward_head(self, feats: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = self.avgpool(feats).flatten(1)
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Sequence[int] | None = None
                              ) -> tuple[Tensor, list[Tensor]]:
        """(logits, stage outputs (B, C_s, H_s, W_s) for the stages in indices, default all 4)."""
        outs = self._stages(x)
        idx = range(4) if indices is None else indices
        for i in idx:
            if not isinstance(i, int) or not -4 <= i < 4:
                raise ValueError(f"indices must hold ints in [-4, 4), got {i!r}")
        return self.forward_head(outs[-1]), [outs[i] for i in idx]


def resnet18(**kwargs) -> ResNet:
    return ResNet(**{"layers": (2, 2, 2, 2), **kwargs})


def resnet34(**kwargs) -> ResNet:
    return ResNet(**{"layers": (3, 4, 6, 3), **kwargs})


# torchvision's ImageNet-1k weights (IMAGENET1K_V1), the initialisation of the DFKD-FGVC teachers;
# their state dicts carry this module's names. Trained on ImageNet mean/std-normalised input.
def _torchvision(file_name: str) -> dict:
    return dict(file_name=file_name, url=f"https://download.pytorch.org/models/{file_name}", num_classes=1000,
                input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                license="bsd-3-clause")


register_model(resnet18, pretrained_cfg=_torchvision("resnet18-f37072fd.pth"))
register_model(resnet34, pretrained_cfg=_torchvision("resnet34-b627a593.pth"))


@register_model
def resnet_micro(**kwargs) -> ResNet:
    """CPU tests/demos: widths 8-64, one block per stage, 3x3 stem (for 32x32 inputs)."""
    return ResNet(**{"layers": (1, 1, 1, 1), "widths": (8, 16, 32, 64), "num_classes": 10,
                     "small_stem": True, **kwargs})

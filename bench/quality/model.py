"""The backbone and heads, their training, and Hugging Face-style safetensors folders."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .data import Split

log = logging.getLogger(__name__)

SIGNAL_LENGTH = 40
FEATURES = 128


class Backbone(nn.Module):
    """A small 1-D conv net: three conv layers and one dense layer, about 91k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, stride=2, padding=2)
        self.conv3 = nn.Conv1d(32, 64, 3, stride=2, padding=1)
        self.fc = nn.Linear(64 * SIGNAL_LENGTH // 4, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x.unsqueeze(1)))
        h = torch.relu(self.conv2(h))
        h = torch.relu(self.conv3(h))
        return torch.relu(self.fc(h.flatten(1)))


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    lr: float
    batch: int = 64


PRETRAIN = TrainConfig(epochs=15, lr=2e-3)
PROBE = TrainConfig(epochs=30, lr=1e-2)
FINETUNE = TrainConfig(epochs=15, lr=1e-3)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(split.x), torch.from_numpy(split.y)


def _fit(params: list[nn.Parameter], forward: nn.Module, split: Split, cfg: TrainConfig, seed: int) -> None:
    """Adam with a cosine schedule on cross-entropy; only ``params`` move."""
    x, y = _tensors(split)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    steps = cfg.epochs * -(-len(y) // cfg.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    forward.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), cfg.batch):
            idx = order[i : i + cfg.batch]
            loss = nn.functional.cross_entropy(forward(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    forward.eval()


def pretrain(split: Split, n_classes: int, seed: int) -> Backbone:
    """The generic pretrained backbone (the pretext head is discarded)."""
    seed_everything(seed)
    backbone = Backbone()
    head = nn.Linear(FEATURES, n_classes)
    net = nn.Sequential(backbone, head)
    _fit(list(net.parameters()), net, split, PRETRAIN, seed)
    return backbone


def linear_probe(backbone: Backbone, split: Split, n_classes: int, seed: int) -> nn.Linear:
    """The task's head, fitted on the frozen backbone (kept frozen from then on, as the paper's heads are)."""
    seed_everything(seed)
    head = nn.Linear(FEATURES, n_classes)
    with torch.no_grad():
        feats = backbone(torch.from_numpy(split.x))
    _fit(list(head.parameters()), head, Split(feats.numpy(), split.y), PROBE, seed)
    return head


def finetune(base: Backbone, head: nn.Linear, split: Split, seed: int) -> Backbone:
    """A copy of the backbone fine-tuned on the task through its frozen head."""
    seed_everything(seed)
    backbone = Backbone()
    backbone.load_state_dict(base.state_dict())
    for p in head.parameters():
        p.requires_grad_(False)
    _fit(list(backbone.parameters()), nn.Sequential(backbone, head), split, FINETUNE, seed)
    return backbone


@torch.no_grad()
def accuracy(backbone: Backbone, head: nn.Linear, split: Split) -> float:
    x, y = _tensors(split)
    backbone.eval()
    return float((head(backbone(x)).argmax(1) == y).float().mean())


def save_backbone(backbone: Backbone, folder: Path, **config: object) -> Path:
    """``folder/model.safetensors`` (float32) and ``folder/config.json``: a Hugging Face-style model folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    doc = {"model_type": "mnist1d-conv-backbone", "architectures": ["Backbone"], "hidden_size": FEATURES, **config}
    (folder / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
    return folder


def load_backbone(folder: Path) -> Backbone:
    backbone = Backbone()
    backbone.load_state_dict(load_file(str(folder / "model.safetensors")))
    backbone.eval()
    return backbone


def save_heads(heads: dict[str, nn.Linear], path: Path) -> None:
    """Every task's head in one safetensors file, keyed ``TASK.weight`` / ``TASK.bias`` (never merged)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{t}.{k}": v.detach().contiguous() for t, h in heads.items() for k, v in h.state_dict().items()}
    save_file(tensors, str(path))


def load_heads(path: Path) -> dict[str, nn.Linear]:
    tensors = load_file(str(path))
    heads: dict[str, nn.Linear] = {}
    for task in sorted({k.rsplit(".", 1)[0] for k in tensors}):
        weight = tensors[f"{task}.weight"]
        head = nn.Linear(weight.shape[1], weight.shape[0])
        head.load_state_dict({"weight": weight, "bias": tensors[f"{task}.bias"]})
        heads[task] = head.eval()
    return heads

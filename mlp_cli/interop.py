"""Bridge to PyTorch: rebuild a checkpoint (or an engine network) as a torch.nn.Sequential.

This module and the data layer are the only places in mlp_cli that import torch; the engine
never does. Example:

    from mlp_cli.interop import load_torch
    net, meta = load_torch("runs/mnist/best.safetensors")  # eval mode, float32
    logits = net(torch.as_tensor(images))  # images normalized as meta["normalization"] says
"""

from __future__ import annotations

import numpy as np


def torch_sequential(architecture: list[dict], state_dict: dict[str, np.ndarray] | None = None):
    """nn.Sequential(*[getattr(nn, d.pop("type"))(**d) for d in architecture]), then load_state_dict."""
    import torch
    from torch import nn

    from mlp_cli import registry

    layers = []
    for spec in architecture:
        spec = dict(spec)
        kind = registry.BY_TORCH[spec.pop("type")]  # one of ours: KeyError for anything else
        layers.append(getattr(nn, kind.torch)(**spec))
    net = nn.Sequential(*layers)
    if state_dict is not None:
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    return net


def load_torch(path):
    """Load one of our safetensors checkpoints into PyTorch. Returns (net in eval mode, metadata)."""
    from mlp_cli.checkpoint import load

    ckpt = load(path)
    net = torch_sequential(ckpt.architecture, ckpt.state)
    return net.eval(), ckpt.metadata

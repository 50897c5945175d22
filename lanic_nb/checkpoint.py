"""Resumable training state as flat tensors: a module's weights and its optimizer's moments, by parameter name.

Both long trainings (the transcoder ensemble, the phantom encoder's pretraining) checkpoint through this, into
safetensors beside a JSON that names the step; nothing is pickled.
"""

from __future__ import annotations

import torch


def training_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """``model.<name>`` for every state-dict entry and ``opt.<param name>.<key>`` for every optimizer moment."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, val in opt.state.get(p, {}).items():
                tensors[f"opt.{names[id(p)]}.{key}"] = torch.as_tensor(val).reshape(-1) if key == "step" else val
    return tensors


def load_training_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """The inverse of :func:`training_tensors`: weights into ``model``, moments into ``opt``'s state."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, p in model.named_parameters():
        st = {key.rsplit(".", 1)[1]: v.to(p.device) for key, v in tensors.items()
              if key.startswith(f"opt.{name}.") and key.count(".") == name.count(".") + 2}
        if st:
            st["step"] = st["step"].reshape(())  # fused AdamW keeps its step count on the parameter's device
            opt.state[p] = st

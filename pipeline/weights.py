"""Reading weight files users bring (base supernets, query backbones): safetensors, or a
PyTorch .pth loaded with `weights_only=True` (never arbitrary pickle), local or s3://."""
from __future__ import annotations

import io

from pipeline.errors import ConfigError
from pipeline.ingest import source_filesystem


def read_state_dict(spec: str, s3=None, what: str = "weights") -> dict:
    """The state_dict in a weights file; a checkpoint's 'state_dict' entry is unwrapped."""
    import torch
    from safetensors.torch import load
    fs, path = source_filesystem(spec, s3)
    try:
        with fs.open_input_stream(path) as fh:
            raw = fh.read()
    except (OSError, FileNotFoundError) as e:
        raise ConfigError(f"{what} {spec} cannot be read ({e}); pass a state_dict file "
                          "(.safetensors or .pth)") from None
    if spec.endswith(".safetensors"):
        return load(raw)
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    return state.get("state_dict", state)

"""Where and in what dtype a model's weights go: dtypes, device maps over several devices, device checks."""

from __future__ import annotations

import json

import torch

from ..errors import ModelLoadError, RealLensError
from ..names import DEVICE_MAP_STRATEGIES, DTYPE_NAMES

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``"bfloat16"`` or ``torch.bfloat16`` -> ``torch.bfloat16``; only the names in :data:`DTYPES`."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ModelLoadError(f"unsupported dtype {dtype!r}; expected one of {', '.join(DTYPES)}")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the name stored in metadata)."""
    return str(dtype).removeprefix("torch.")


def parse_device_map(text: str | None) -> str | dict[str, str | int] | None:
    """A ``--device-map`` value: a strategy name, or a JSON object ``{module: device}``."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"--device-map is not valid JSON ({exc}); expected e.g. '{{\"\": \"cpu\"}}'") from None
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool) for k, v in mapping.items()
        ):
            raise ModelLoadError(
                f"--device-map must map module names to devices (strings like 'cuda:0' or GPU indices); found {text}"
            )
        return mapping
    if text not in DEVICE_MAP_STRATEGIES:
        raise ModelLoadError(
            f"unknown --device-map {text!r}; expected one of {', '.join(DEVICE_MAP_STRATEGIES)} or a JSON map "
            'such as \'{"model.layers.0": 0, "lm_head": 1}\' (for one device use --device)'
        )
    return text


def resolve_placement(*, device, device_map, n_devices) -> tuple[str | dict | None, dict | None]:
    """``(device_map, max_memory)`` for ``from_pretrained``: ``(None, None)`` for one device."""
    from transformer_lens.utilities.multi_gpu import resolve_device_map

    if n_devices is not None and (not isinstance(n_devices, int) or isinstance(n_devices, bool) or n_devices < 1):
        raise ModelLoadError(f"n_devices must be a positive integer; found {n_devices!r}")
    spread = device_map is not None or (n_devices or 1) > 1
    if spread and device is not None:
        raise ModelLoadError(
            f"device={device!r} and device_map/n_devices are exclusive: a device map places the model itself; "
            "drop --device"
        )
    if device_map is not None and (n_devices or 1) > 1:
        raise ModelLoadError("pass either device_map or n_devices, not both (n_devices builds a 'balanced' map)")
    if isinstance(device_map, str):
        parse_device_map(device_map)  # the same check as the command line's
    try:
        # TransformerLens's own translation: n_devices -> ("balanced", max_memory over that many GPUs).
        return resolve_device_map(n_devices, device_map, None)
    except ValueError as exc:
        raise ModelLoadError(f"{exc} (pass --device-map with the devices you have, or fewer --n-devices)") from None


def check_device(device: str | None) -> None:
    """RealLensError unless ``device`` is None or a torch device that exists on this machine."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RealLensError(f"--device {device!r} is not a torch device; expected e.g. cpu, cuda, cuda:1 or mps") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}, but no GPU is visible"
            raise RealLensError(f"--device {device}: no CUDA device here (torch {torch.__version__} is built {built}); "
                                "use --device cpu, or omit --device")
        if parsed.index is not None and parsed.index >= count:
            raise RealLensError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return
    if parsed.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise RealLensError(f"--device {device}: Apple MPS is not available here; use --device cpu, or omit --device")
        return
    backend = getattr(torch, parsed.type, None)
    if parsed.type == "meta" or not callable(getattr(backend, "is_available", None)) or not backend.is_available():
        raise RealLensError(f"--device {device}: no {parsed.type} device is available here; use --device cpu, or omit --device")

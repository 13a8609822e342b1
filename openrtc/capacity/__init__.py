"""Token classes, KV-cache estimates and the capacity planner (`openrtc capacity plan`)."""

from typing import TYPE_CHECKING, Any

from openrtc.capacity.arch import MODELS, ModelArch
from openrtc.capacity.classes import Classes

if TYPE_CHECKING:
    from openrtc.capacity.hook import CapacityConfig, CapacityHook

__all__ = ["MODELS", "CapacityConfig", "CapacityHook", "Classes", "ModelArch"]


def __getattr__(name: str) -> Any:
    # On first use: the CLI's parser and `capacity plan` read classes and architectures without the
    # runtime the hook brings.
    if name in ("CapacityConfig", "CapacityHook"):
        from openrtc.capacity import hook

        return getattr(hook, name)
    raise AttributeError(f"module 'openrtc.capacity' has no attribute {name!r}")

"""Token classes, KV-cache estimates and the capacity planner (`openrtc capacity plan`)."""

from openrtc.capacity.arch import MODELS, ModelArch
from openrtc.capacity.classes import Classes
from openrtc.capacity.hook import CapacityConfig, CapacityHook

__all__ = ["MODELS", "CapacityConfig", "CapacityHook", "Classes", "ModelArch"]

"""SAE maths and file formats: the bottom layer (knows nothing of models or policies)."""

from featureguard.sae.load import Device, SAESource, detect_format, load_sae
from featureguard.sae.model import SAE, Normalization, SAEConfig

__all__ = ["SAE", "Device", "Normalization", "SAEConfig", "SAESource", "detect_format", "load_sae"]

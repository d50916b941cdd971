"""MST-Net and its building blocks (no data access: this layer never imports mstnet.data)."""

from mstnet.models.config import MSTNetConfig, mstnet_config
from mstnet.models.mstnet import MSTNet, build_mstnet
from mstnet.models.output import ModelOutput

__all__ = ["MSTNetConfig", "MSTNet", "ModelOutput", "build_mstnet", "mstnet_config"]

"""Backbones (timm ViTs), LoRA-wrapped qkv projections and task heads."""
from .backbone import (ModelError, UnsupportedModelError, WeightsError, check_backbone,
                       create_backbone, file_sha256, load_backbone_weights, read_state_dict)
from .continual_vit import ContinualViT
from .heads import TaskHeads
from .lora import LoRAQKV, inject_lora, lora_parameters

__all__ = [
    "ContinualViT", "LoRAQKV", "ModelError", "TaskHeads", "UnsupportedModelError", "WeightsError",
    "check_backbone", "create_backbone", "file_sha256", "inject_lora", "load_backbone_weights",
    "lora_parameters", "read_state_dict",
]

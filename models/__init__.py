"""Backbones (timm ViTs), LoRA-wrapped qkv projections and task heads."""
from .backbone import (ModelError, UnsupportedModelError, WeightsError, check_backbone,
                       create_backbone, file_sha256, hub_weights_file, load_backbone_weights,
                       load_error_reason, model_mean_std, pretrained_config, read_state_dict)
from .heads import ContinualViT, TaskHeads
from .lora import LoRAQKV, inject_lora, kaiming_uniform_A, lora_parameters

"""AuM encoder models and their presets."""
from aum.models.aum import AuM, AuMConfig, AuMOutput, resize_pos_grid
from aum.models.registry import PRESETS, create_model, list_models, model_config

__all__ = ["AuM", "AuMConfig", "AuMOutput", "PRESETS", "create_model", "list_models", "model_config",
           "resize_pos_grid"]

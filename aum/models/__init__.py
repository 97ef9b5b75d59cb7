"""AuM and DASS encoder models and their presets."""
from aum.models.aum import AuM, AuMConfig, AuMOutput, resize_pos_grid
from aum.models.dass import DASS, DASSConfig
from aum.models.registry import DASS_PRESETS, PRESETS, create_model, list_models, model_config

__all__ = ["AuM", "AuMConfig", "AuMOutput", "DASS", "DASSConfig", "DASS_PRESETS", "PRESETS", "create_model",
           "list_models", "model_config", "resize_pos_grid"]

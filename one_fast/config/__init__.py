"""The training configuration: the schema (fields carrying help, group and range), the presets,
the checks, and the resolution of given flags into a config.

Layering: this package imports ``methods`` and ``models`` (for the choices it validates) and is
imported by run assembly and the commands; the engine never reads it.
"""

from .checks import validate_config, validate_model_fields
from .compare import config_differences, config_hash, describe_differences
from .from_flags import apply_method_requirements, config_from_flags, run_dir_of, scale_schedule
from .own_arch import arch_kwargs
from .presets import PRESETS
from .schema import (
    ARCH_OPTION_FIELDS,
    GROUPS,
    INCIDENTAL_FIELDS,
    INVOCATION_FIELDS,
    MODEL_FIELDS,
    RESUMABLE_FIELDS,
    Range,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    flag_name,
    option,
    show_value,
)

__all__ = ["ARCH_OPTION_FIELDS", "GROUPS", "INCIDENTAL_FIELDS", "INVOCATION_FIELDS",
           "MODEL_FIELDS", "PRESETS", "RESUMABLE_FIELDS", "Range", "TrainConfig",
           "apply_method_requirements", "arch_kwargs", "config_differences", "config_from_dict",
           "config_from_flags", "config_hash", "config_to_dict", "describe_differences",
           "flag_name", "option", "run_dir_of", "scale_schedule", "show_value",
           "validate_config", "validate_model_fields"]

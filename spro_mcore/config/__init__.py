"""Typed configuration: schema (dataclasses), YAML + command-line loading (omegaconf), validation."""

from spro_mcore.config.load import ConfigError, load_config, to_yaml, validate, validate_world_size
from spro_mcore.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "to_yaml", "validate", "validate_world_size"]

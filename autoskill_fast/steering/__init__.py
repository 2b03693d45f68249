"""Steering with the basis: vectors, in-process hooks, baked checkpoints, llama.cpp control vectors."""

from .baking import bake, verify_bake
from .export import SteerConfig, export_steering
from .hooks import steer
from .llamacpp import export_llamacpp, read_llamacpp
from .vector import SteeringVector

__all__ = ["SteeringVector", "steer", "bake", "verify_bake", "export_llamacpp", "read_llamacpp", "SteerConfig",
           "export_steering"]

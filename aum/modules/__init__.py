"""Layers of the AuM encoder: the Mamba mixer (three scan directions) and the residual block."""
from aum.modules.block import Block
from aum.modules.mixer import DIRECTIONS, MambaMixer

__all__ = ["Block", "DIRECTIONS", "MambaMixer"]

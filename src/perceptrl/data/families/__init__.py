"""Synthetic question families (see ``perceptrl.data.synthetic`` for the registry and the task)."""

from perceptrl.data.families.arith import ArithFamily
from perceptrl.data.families.base import DIFFICULTIES, Draft, Family
from perceptrl.data.families.compare import CompareFamily
from perceptrl.data.families.count import CountFamily
from perceptrl.data.families.pope import POPE_MODES, PopeFamily
from perceptrl.data.families.shortcut import ShortcutFamily
from perceptrl.data.families.spatial import SpatialFamily
from perceptrl.data.families.text import TextFamily

__all__ = [
    "DIFFICULTIES",
    "POPE_MODES",
    "ArithFamily",
    "CompareFamily",
    "CountFamily",
    "Draft",
    "Family",
    "PopeFamily",
    "ShortcutFamily",
    "SpatialFamily",
    "TextFamily",
]

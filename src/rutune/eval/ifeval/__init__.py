"""ruIFEval core: the 25 verifiable-instruction checkers with ruIFEval's Russian rules, strict and loose scoring,
the four aggregate scores, row validation and loading. Self-contained; wiring into a suite lives elsewhere.

See docs/ruifeval.md for the rules, the offline language tools and ruIFEval's known defects (kept by default).
"""

from rutune.eval.ifeval.errors import IfevalError
from rutune.eval.ifeval.registry import INSTRUCTION_IDS, INSTRUCTIONS, check_kwargs, check_row
from rutune.eval.ifeval.rows import (
    HUB_ID,
    PINNED_URL,
    SAMPLE_PATH,
    LoadedRows,
    load_rows,
)
from rutune.eval.ifeval.scoring import (
    SCORE_NAMES,
    check_instruction,
    follows_loose,
    follows_strict,
    ifeval_scores,
    instruction_breakdown,
    loose_variants,
    score_response,
)

__all__ = [
    "HUB_ID", "PINNED_URL", "INSTRUCTIONS", "INSTRUCTION_IDS", "SAMPLE_PATH", "SCORE_NAMES",
    "IfevalError", "LoadedRows", "check_instruction", "check_kwargs", "check_row", "follows_loose",
    "follows_strict", "ifeval_scores", "instruction_breakdown", "load_rows", "loose_variants", "score_response",
]

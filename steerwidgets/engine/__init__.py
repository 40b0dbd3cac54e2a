"""The steering engine: every forward pass goes through an nnsight trace.

Entry points: :func:`generate` (unsteered and steered continuations, streamed), :func:`score`
(per-token log-probabilities of given completions), :func:`score_choices` (the same for several candidates
per prompt, each prompt run once), :func:`next_token_logprobs` (the next-token
distribution after token sequences), :func:`propensity_sweep` (the A/B propensity matrix over strengths
and layers) and :func:`read_activations` (block outputs, for building vectors). Work is never repeated:
strengths share one pass, the layers below the steered one run once, and what lies before the first
steered position is cached and reused (keys/values).

One module per concern:

- :mod:`.generation` — :func:`generate`, :class:`Continuation`, :class:`GenerationResult`,
  :class:`GenerationCancelled`;
- :mod:`.scoring` — :func:`score`, :func:`score_choices`, :func:`next_token_logprobs`;
- :mod:`.activations` — :func:`read_activations`, attention heads' outputs and patching (function vectors);
- :mod:`.sweep` — :func:`propensity_sweep`, :class:`PropensityResult`, the random-direction null;
- :mod:`._trace` — steering inside a trace (shared plumbing).

Prompt building and tokenisation live in :mod:`steerwidgets.prompts`; their names are re-exported here
(``sw.engine.tokenize_prompt`` keeps working).
"""

from ..prompts import (
    Encoded,
    ab_prompt,
    adds_bos,
    answer_text_prompt,
    as_texts,
    check_length,
    check_sampling,
    encode,
    letter_id,
    prompt_text,
    tokenize_prompt,
    use_chat,
)
from .activations import attention_out_proj, head_means, patched_answer_probs, read_activations
from .generation import Continuation, GenerationCancelled, GenerationResult, generate
from .scoring import PACKED_MODEL_TYPES, next_token_logprobs, score, score_choices
from .sweep import (
    DEFAULT_POSITIONS,
    DEFAULT_STRENGTHS,
    NULL_METHODS,
    PROPENSITY_DEFINITIONS,
    PROTOCOLS,
    PropensityResult,
    null_directions_for,
    propensity_sweep,
)

_adds_bos, _use_chat = adds_bos, use_chat  # their names before prompts.py

__all__ = [
    "DEFAULT_POSITIONS",
    "DEFAULT_STRENGTHS",
    "NULL_METHODS",
    "PACKED_MODEL_TYPES",
    "PROPENSITY_DEFINITIONS",
    "PROTOCOLS",
    "Continuation",
    "Encoded",
    "GenerationCancelled",
    "GenerationResult",
    "PropensityResult",
    "ab_prompt",
    "adds_bos",
    "answer_text_prompt",
    "as_texts",
    "attention_out_proj",
    "check_length",
    "check_sampling",
    "encode",
    "generate",
    "head_means",
    "letter_id",
    "next_token_logprobs",
    "null_directions_for",
    "patched_answer_probs",
    "prompt_text",
    "propensity_sweep",
    "read_activations",
    "score",
    "score_choices",
    "tokenize_prompt",
    "use_chat",
]

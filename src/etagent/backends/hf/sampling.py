"""Choosing the next token of every row from its logits, and its log-probabilities.

Log-probabilities are those of the *model's* distribution (``log_softmax`` of the raw logits),
before temperature, top-k/top-p and the repetition penalty. That is what a trainer recomputes
from the same model, so importance ratios and KL terms compare like with like (vLLM's default
``raw_logprobs`` mode does the same). Sampling is by inverse CDF rather than
``torch.multinomial``, and the top-p nucleus is looked for with ``topk`` before falling back to a
full sort: each of those was 10-50% of a batch-16 step on the CPU.
"""

from __future__ import annotations

import torch

from etagent.backends.base import SamplingParams


def _top_p_filter(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering of logits [b, V]: keep the most likely tokens until they hold ``top_p``.

    A full sort of [16, 49152] takes ~100 ms on a CPU core; the nucleus is usually far smaller
    than the vocabulary, so we look for it in the top 64, then the top 1024, and sort only the
    rows it is not found in. Tokens tied with the last kept one are kept too.
    """
    probs = torch.softmax(x, dim=-1)  # [b, V]
    threshold = torch.empty((x.shape[0], 1), dtype=probs.dtype, device=x.device)  # [b, 1]
    rows = torch.arange(x.shape[0], device=x.device)
    for k in (64, 1024, x.shape[-1]):
        k = min(k, x.shape[-1])
        vals = torch.topk(probs[rows], k, dim=-1).values  # [r, k], descending
        cum = vals.cumsum(-1)
        found = (cum[:, -1] >= top_p) | (k == x.shape[-1])  # [r]
        # kept = tokens whose better-ranked tokens hold less than top_p (always >= 1)
        kept = ((cum - vals) < top_p).sum(-1, keepdim=True)  # [r, 1]
        threshold[rows[found]] = vals.gather(1, kept - 1)[found]
        rows = rows[~found]
        if rows.numel() == 0:
            break
    return x.masked_fill(probs < threshold, float("-inf"))


def pick(
    logits: torch.Tensor,
    params: SamplingParams,
    rng: torch.Generator | None,
    seen: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Choose the next token of every row from float32 logits [b, V].

    Returns (token [b], its log-prob under the raw model distribution [b], top-k log-probs
    [b, k] and their ids [b, k], or None when no alternatives were asked for).
    """
    logp = torch.log_softmax(logits, dim=-1)  # [b, V]
    x = logits
    if seen is not None:  # HF's rule: shrink the logit of every token already seen
        p = params.repetition_penalty
        x = torch.where(seen, torch.where(x < 0, x * p, x / p), x)
    if params.temperature <= 0:
        tok = x.argmax(dim=-1)
    else:
        x = x / params.temperature
        if params.top_k > 0 and params.top_k < x.shape[-1]:
            kth = torch.topk(x, params.top_k, dim=-1).values[:, -1:]  # [b, 1]
            x = x.masked_fill(x < kth, float("-inf"))
        if params.top_p < 1.0:
            x = _top_p_filter(x, params.top_p)
        # Inverse-CDF sampling: torch.multinomial draws one exponential per vocab entry, which
        # took 28 ms of a 200 ms batch-16 step; one uniform per row and a binary search do not.
        # The cumsum runs in float64 so that rare tokens keep their probability over 49k terms.
        cdf = torch.softmax(x, dim=-1).double().cumsum(-1)  # [b, V]
        u = torch.rand((x.shape[0], 1), generator=rng, device=x.device, dtype=torch.float64)
        tok = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1)
        tok = tok.clamp(max=x.shape[-1] - 1)
    tok_lp = logp.gather(1, tok[:, None]).squeeze(1)
    if params.logprobs > 0:
        top_lp, top_ids = torch.topk(logp, params.logprobs, dim=-1)
        return tok, tok_lp, top_lp, top_ids
    return tok, tok_lp, None, None

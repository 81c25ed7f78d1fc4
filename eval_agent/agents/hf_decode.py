"""How the ``hf`` backend draws tokens: :class:`RowSampler` (per-row seeded sampling) and
:func:`decode_loop`, the decoding loop used with conversation KV reuse (see :mod:`eval_agent.agents.hf`)."""
from __future__ import annotations

from typing import Any, Sequence

from eval_agent.agents.policy import SamplingParams
from eval_agent.agents.shared_prefix import ATTENTION_NAME
from eval_agent.agents.transformers_adapter import attention_implementation, cache_kwargs


def _torch():
    import torch

    return torch


class RowSampler:
    """A logits processor that samples each row with its own generator (temperature + nucleus).

    For row ``i`` with temperature ``T_i > 0``: ``p = softmax(z / T_i)``, restricted to the
    smallest set of most likely tokens whose mass reaches ``top_p_i`` (renormalised), then one
    token drawn by inverse transform sampling: ``u ~ U[0, 1)`` from generator ``i`` and
    ``k = min{j : sum_{l <= j} p_l > u}``. The row's scores become ``0`` at ``k`` and ``-inf``
    elsewhere, so the greedy step of ``generate`` picks exactly ``k``. Rows with ``T_i == 0`` are
    left alone (greedy). The arithmetic runs on all sampled rows at once; only the uniform draws
    are per row, so a row's tokens depend on its seed and its logits, not on its batch.
    """

    def __init__(self, temperatures: Sequence[float], top_ps: Sequence[float], seeds: Sequence[int], device: Any):
        torch = _torch()
        self.temperatures = list(temperatures)
        self.top_ps = list(top_ps)
        self.rows = [i for i, t in enumerate(self.temperatures) if t > 0]
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(s) % (2**63))
            self.generators.append(g)
        self._index = torch.tensor(self.rows, dtype=torch.long, device=device)
        self._temps = torch.tensor([self.temperatures[i] for i in self.rows], dtype=torch.float32, device=device)
        self._top_p = torch.tensor([self.top_ps[i] for i in self.rows], dtype=torch.float32, device=device)
        self._nucleus = any(self.top_ps[i] < 1.0 for i in self.rows)
        self._device = device

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = _torch()
        if not self.rows:
            return scores
        idx = self._index
        probs = torch.softmax(scores.index_select(0, idx).float() / self._temps[:, None], dim=-1)
        if self._nucleus:
            sorted_p, order = torch.sort(probs, dim=-1, descending=True)
            keep_sorted = (torch.cumsum(sorted_p, dim=-1) - sorted_p) < self._top_p[:, None]
            keep_sorted[:, 0] = True
            keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
            probs = torch.where(keep, probs, torch.zeros_like(probs))
        cdf = torch.cumsum(probs, dim=-1)
        u = torch.stack([torch.rand((), generator=self.generators[i], device=self._device) for i in self.rows])
        k = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1).contiguous(), right=True).clamp_(max=cdf.shape[1] - 1)
        out = scores.clone()
        out[idx] = float("-inf")
        out[idx, k.squeeze(1)] = 0.0
        return out


def row_sampler(rows: Sequence[SamplingParams], device: Any) -> RowSampler:
    """The :class:`RowSampler` of a chunk's rows (each with its own temperature, top_p and seed)."""
    return RowSampler([p.temperature for p in rows], [p.top_p for p in rows], [int(p.seed or 0) for p in rows],
                      device)


def decode_loop(model: Any, tokenizer: Any, eos_token_id: int | list[int], input_ids: Any, mask: Any, cache: Any,
                width_c: int, rows: list[SamplingParams], device: Any) -> list[list[int]]:
    """Prefill each row's new columns, then decode one token per row per step; the generated ids per row.

    What ``model.generate`` does for this case (greedy, or :class:`RowSampler` draws; a row
    stops at EOS or at a stop string and is padded from there; the call ends when every row
    stopped or ``max_new_tokens`` were drawn; the last drawn token is not fed back), in a loop
    of its own: per step it feeds one token per row with positions and a boolean mask kept
    up to date in place, which saves ``generate``'s per-step bookkeeping (a large share of a
    small model's decoding time on a CPU).
    """
    torch = _torch()
    p0 = rows[0]
    n, width = input_ids.shape
    steps = p0.max_new_tokens
    dev = device
    pad = tokenizer.pad_token_id
    eos = torch.tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=dev)
    sampler = row_sampler(rows, dev) if p0.temperature > 0 else None
    full = torch.zeros((n, width + steps), dtype=torch.bool, device=dev)
    full[:, :width] = mask.to(dev).bool()
    positions = (mask.cumsum(-1) - 1).clamp(min=0).to(dev)
    # a 4D boolean mask is passed through as is by sdpa-style attention; other implementations get the 2D mask
    four_d = attention_implementation(model) in ("sdpa", ATTENTION_NAME)
    out = torch.full((n, steps), pad, dtype=torch.long, device=dev)
    running = torch.ones(n, dtype=torch.bool, device=dev)
    with torch.inference_mode():
        logits = model(input_ids=input_ids[:, width_c:].to(dev), attention_mask=full[:, :width].long(),
                       position_ids=positions[:, width_c:], use_cache=True,
                       logits_to_keep=1, **cache_kwargs(model, cache)).logits[:, -1, :]
        last = positions[:, -1:]
        for t in range(steps):
            scores = logits.float()
            if sampler is not None:
                scores = sampler(None, scores)
            tok = torch.where(running, scores.argmax(-1), torch.full_like(running, pad, dtype=torch.long))
            out[:, t] = tok
            running &= ~torch.isin(tok, eos)
            if p0.stop:
                stop_at_strings(tokenizer, out[:, :t + 1], running, p0.stop)
            if t == steps - 1 or not bool(running.any()):
                break
            full[:, width + t] = True
            last = last + 1
            step_mask = full[:, None, None, :width + t + 1] if four_d else full[:, :width + t + 1].long()
            logits = model(input_ids=tok[:, None], attention_mask=step_mask, position_ids=last,
                           use_cache=True, **cache_kwargs(model, cache)).logits[:, -1, :]
    return out[:, :t + 1].tolist()


def stop_at_strings(tokenizer: Any, generated: Any, running: Any, stop: Sequence[str]) -> None:
    """Stop the running rows whose generated text now ends a stop string.

    Called after every token, so a stop string that appears must end in the newest token: only
    the last ``max bytes of a stop string + 1`` tokens are decoded (a token holds at least one byte).
    """
    window = max(len(x.encode("utf-8")) for x in stop) + 1
    tail = generated[:, -window:]
    for r in running.nonzero().flatten().tolist():
        text = tokenizer.decode(tail[r].tolist(), skip_special_tokens=True)
        if any(x in text for x in stop):
            running[r] = False

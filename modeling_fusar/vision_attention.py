# Copyright 2026 The fusar-gpt authors. Licensed under the Apache License, Version 2.0.
"""Vision attention over variable-length segments (Qwen2.5-VL's windows and images) in one kernel call.

transformers' Qwen2.5-VL vision attention, under `sdpa`, loops in Python over the ~160 windows of every layer; under
a flash attention it hands the attention function the segments' `cu_seqlens` instead. `varlen_attention` is such a
function: PyTorch's own variable-length flash attention (`torch.nn.attention.varlen`) on CUDA in half precision, and
elsewhere exactly what transformers' `sdpa` path computes (the same call, segment by segment).

transformers passes `cu_seqlens` only when the implementation's name contains "flash", and building a model from a
config that names such an implementation makes it look a kernel up on the Hub. So the function is registered under
`VARLEN` and named on the vision config only while a vision attention module runs (forward hooks, see
`use_vision_attention`): at rest, and in every saved or copied config, the base's own implementation stays. Only
`sdpa` is replaced (the one whose window loop is slow, and whose numbers the fallback reproduces); eager or a flash
attention chosen on purpose is left alone, as are backbones whose vision attention takes no `cu_seqlens`.
"""

from __future__ import annotations

import inspect

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # a torch without it: the exact fallback everywhere
    varlen_attn = None

VARLEN = "fusar_varlen_flash"


def varlen_kernel_usable(query: torch.Tensor) -> bool:
    """PyTorch's varlen flash attention runs on CUDA, in fp16 / bf16."""
    return varlen_attn is not None and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)


def varlen_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                     cu_seq_lens_k=None, max_length_q=None, max_length_k=None, is_causal=False, **kwargs):
    """query / key / value [1, heads, tokens, dim], the segments one after another -> ([1, tokens, heads, dim], None),
    attention within each segment only."""
    if cu_seq_lens_q is None:  # called without segments: plain sdpa
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      is_causal=is_causal, **kwargs)
    if varlen_kernel_usable(query) and not dropout:
        q, k, v = (tensor[0].transpose(0, 1) for tensor in (query, key, value))  # [tokens, heads, dim]
        output = varlen_attn(q, k, v, cu_seq_lens_q.to(torch.int32), cu_seq_lens_k.to(torch.int32), int(max_length_q),
                             int(max_length_k), scale=scaling)
        return output.unsqueeze(0), None
    # transformers' own sdpa path for these segments, call for call: the same numbers.
    lengths = (cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).tolist()
    pieces = [torch.split(tensor, lengths, dim=2) for tensor in (query, key, value)]
    outputs = [sdpa_attention_forward(module, q, k, v, attention_mask=None, scaling=scaling, dropout=dropout,
                                      is_causal=False, **kwargs)[0] for q, k, v in zip(*pieces)]
    return torch.cat(outputs, dim=1), None


AttentionInterface.register(VARLEN, varlen_attention)


def segment_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """`model`'s attention modules that take `cu_seqlens` (its vision tower's, if any)."""
    return [module for module in model.modules() if getattr(module, "config", None) is not None
            and "cu_seqlens" in inspect.signature(type(module).forward).parameters]


def use_vision_attention(model: torch.nn.Module, enabled: bool) -> None:
    """Run `model`'s segment attention through `VARLEN` (when the base's implementation is `sdpa`), or not; may be
    called again to switch."""
    for module in segment_attention_modules(model):
        if not hasattr(module, "use_varlen"):
            module.register_forward_pre_hook(_switch_on, with_kwargs=True)
            module.register_forward_hook(_switch_back, with_kwargs=True, always_call=True)  # also when forward raises
        module.use_varlen = enabled


def _switch_on(module, args, kwargs):
    if module.use_varlen and module.config._attn_implementation == "sdpa":
        module.config._attn_implementation = VARLEN
        module.attn_at_rest = "sdpa"


def _switch_back(module, args, kwargs, output):
    if getattr(module, "attn_at_rest", None) is not None:
        module.config._attn_implementation, module.attn_at_rest = module.attn_at_rest, None

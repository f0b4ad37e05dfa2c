"""
Experiments that did not become the method, kept so that the notebook's rows reproduce
(docs/notebook.md names the command of each). The method's path (model.py, distill_mtp.py,
decode.py) does not need this file: each piece here is applied from outside when its flag is
given.

- A mask-gated low-rank adapter (distill_mtp.py --adapter_rank r): the student learns its
  masks in a small update that only the <MTP> positions see. It kept k = 1 exactly the
  teacher's but learned the masks poorly (70.5% at 1.98 tokens per pass).

ConfAdapt's other gates, decoding experiments, are in gates.py.
"""
from functools import partial

import torch
import torch.nn as nn


# --------------------------------------------------------------------------------------
# The mask-gated adapter (Samragh et al. 2025, "Your LLM Knows the Future", arXiv 2507.11851,
# gated LoRA): every linear layer of the blocks gains a rank-r update B A x that applies only
# at the masks, so the real tokens run through the teacher's weights unchanged and a student's
# k = 1 output *is* the teacher's.

def add_mask_adapter(model, rank, first_mask_id):
    """Give every linear layer of `model`'s blocks the update B A x (A: (r, n_in), B: (n_out, r),
    B at zero, so it starts as no change), added where the token id is >= first_mask_id: at
    the <MTP> masks. The parameters are named `lora_a` and `lora_b` on each layer; hooks apply
    them, so model.py's forward stays as it is. Returns the model."""
    gate = {}  # the current pass's (B, T, 1) mask positions, set before the blocks run
    # Module-level hooks bound with partial, not closures: a bench worker receives the model pickled.
    model.register_forward_pre_hook(partial(find_masks, gate, first_mask_id), with_kwargs=True)
    for block in model.transformer.h:
        for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            device = layer.weight.device
            layer.lora_a = nn.Parameter(torch.randn(rank, layer.in_features, device=device) * 0.02)
            layer.lora_b = nn.Parameter(torch.zeros(layer.out_features, rank, device=device))
            layer.register_forward_hook(partial(add_update, gate))
    return model


def find_masks(gate, first_mask_id, model, args, kwargs):  # the adapter's pre-hook on the whole model
    idx = args[0] if args else kwargs["idx"]  # (B, T)
    gate["at_masks"] = (idx >= first_mask_id)[..., None]


def add_update(gate, layer, inputs, y):  # the adapter's hook on each linear layer: B A x at the masks
    x = inputs[0]
    return y + (x @ layer.lora_a.t().to(x.dtype) @ layer.lora_b.t().to(x.dtype)) * gate["at_masks"]


def train_only_the_adapter(student, rank, mask_id):
    """distill_mtp.py --adapter_rank: add the adapter, then freeze every weight but the
    adapter's and the masks' embedding rows (the embedding is tied to the output layer, so its
    other rows would change the real tokens' predictions)."""
    add_mask_adapter(student, rank, mask_id)
    for name, p in student.named_parameters():
        p.requires_grad_("lora_" in name or name == "transformer.wte.weight")
    frozen_rows = torch.arange(student.config.vocab_size, device=student.lm_head.weight.device) < mask_id
    student.transformer.wte.weight.register_hook(lambda grad: grad.masked_fill(frozen_rows[:, None], 0.0))
    return student

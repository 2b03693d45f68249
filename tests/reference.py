"""The paper's recipe computed the slow way: batch size 1, fp32, `output_hidden_states=True`, then the seed code's
mean over positions 1.. (`hidden_states[layer][:, 1:].mean()`), whatever the first token is."""

from __future__ import annotations

import torch


@torch.no_grad()
def paper_features(model_dir, texts, layer_ids, *, pooling="mean", first_token="drop") -> torch.Tensor:
    """first_token: "drop" (the seed code), "keep", or "drop_bos" (only a leading BOS token: version 0.1's rule)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        hidden = model(ids, output_hidden_states=True).hidden_states  # embeddings, then one entry per block
        if first_token == "drop":
            start = 1
        elif first_token == "drop_bos":
            start = 1 if ids[0, 0].item() == tokenizer.bos_token_id else 0
        else:
            start = 0
        if pooling == "last":
            rows.append(torch.cat([hidden[layer + 1][0, -1] for layer in layer_ids]))
        else:
            rows.append(torch.cat([hidden[layer + 1][0, start:].mean(dim=0) for layer in layer_ids]))
    return torch.stack(rows)

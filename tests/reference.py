"""The paper's recipe computed the slow way: batch size 1, fp32, `output_hidden_states=True`, mean after a leading BOS."""

from __future__ import annotations

import torch


@torch.no_grad()
def paper_features(model_dir, texts, layer_ids, *, pooling="mean") -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        hidden = model(ids, output_hidden_states=True).hidden_states  # embeddings, then one entry per block
        start = 1 if ids[0, 0].item() == tokenizer.bos_token_id else 0
        if pooling == "last":
            rows.append(torch.cat([hidden[layer + 1][0, -1] for layer in layer_ids]))
        else:
            rows.append(torch.cat([hidden[layer + 1][0, start:].mean(dim=0) for layer in layer_ids]))
    return torch.stack(rows)

"""GPU checks for packed attention and sparse scoring (issue #17 points 2 and 5), run by gpu_check_attn.sh.

On CUDA: for BERT with several documents per row, causal and bidirectional, every document form the
device can run (flex, split, dense) gives the hidden states and parameter gradients of the dense mask
(fp32, within the suite's rounding tolerance at the model's width); the form the library picks by itself
is reported; and PLL with the last layer only at the scored positions equals the full computation
(BERT and GPT-BERT, pll and mntp) within 1e-4 nats. Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import math

import torch

import masklm.models.attention as attention
from masklm.config import ModelConfig
from masklm.models import build_model


def _run(model, ids, docs, causal):
    model.zero_grad(set_to_none=True)
    hidden = model.encode(ids, causal=causal, document_ids=docs)
    hidden.pow(2).mean().backward()
    return hidden.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def forms_agree(device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    config = ModelConfig(arch="bert", vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=256, max_position_embeddings=512, attention_probs_dropout_prob=0.0,
                         hidden_dropout_prob=0.0)
    model = build_model(config).to(device).train()
    ids = torch.randint(5, 512, (4, 256), device=device)
    docs = (torch.rand(4, 256, device=device) < 0.02).long().cumsum(1)
    saved = dict(attention.DOCUMENT_FORMS)
    out = []
    try:
        for causal in (False, True):
            attention.DOCUMENT_FORMS[device.type] = ("dense",)
            ref_h, ref_g = _run(model, ids, docs, causal)
            scale = max(float(g.abs().max()) for g in ref_g.values())
            tol = lambda s: 4 * torch.finfo(torch.float32).eps * math.sqrt(256) * s  # conftest.tolerance  # noqa: E731
            for form in ("flex", "split") if device.type == "cuda" else ("split",):  # no flex backward on CPU
                attention.DOCUMENT_FORMS[device.type] = (form, "dense")
                picked = model.bert._embed(ids, None, causal, docs, None)[1].form
                h, g = _run(model, ids, docs, causal)
                dh = float((h - ref_h).abs().max())
                dg = max(float((g[n] - ref_g[n]).abs().max()) for n in ref_g)
                out.append({"form": form, "picked": picked, "causal": causal, "max_hidden_diff": dh,
                            "max_grad_diff": dg, "ok": picked == form and dh <= tol(float(ref_h.abs().max()))
                            and dg <= tol(scale)})
    finally:
        attention.DOCUMENT_FORMS.clear()
        attention.DOCUMENT_FORMS.update(saved)
    model.eval()
    out.append({"default_form_eval": model.bert._embed(ids, None, False, docs, None)[1].form,
                "default_form_train_with_dropout": "flex is skipped with dropout: " + ",".join(
                    attention.document_forms(device.type, dropout=True, flex=True))})
    return out


def sparse_scoring(device: torch.device) -> list[dict]:
    from masklm.scoring.pll import token_logprobs
    from masklm.tokenizer import train_tokenizer

    words = "the a cat dog sat ran unbelievable extraordinary wandering shepherds lantern river .".split()
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (10,), generator=g)) for _ in range(80)]
    tok = train_tokenizer(docs, kind="wordpiece", vocab_size=70, min_frequency=1)
    out = []
    for arch in ("bert", "gpt-bert"):
        torch.manual_seed(1)
        model = build_model(ModelConfig(arch=arch, vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=128,
                                        max_position_embeddings=64)).to(device).eval()
        for metric in ("pll", "mntp"):
            _, sparse = token_logprobs(model, tok, docs[:20], metric)
            _, full = token_logprobs(model, tok, docs[:20], metric, sparse=False)
            diff = max(float(abs(a - b).max()) for a, b in zip(sparse, full))
            out.append({"arch": arch, "metric": metric, "max_abs_nats": diff, "ok": diff <= 1e-4})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to try the script out")
    args = ap.parse_args()
    device = torch.device(args.device)
    attention.flex_available.cache_clear()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__,
              "flex_available": attention.flex_available(), "forms": forms_agree(device),
              "sparse_scoring": sparse_scoring(device)}
    result["all_ok"] = all(r.get("ok", True) for r in result["forms"] + result["sparse_scoring"])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Dump per-layer mean pre-softmax attention scores of a Hugging Face causal LM (paper Sec. 5.2).

What it computes, per layer l (the quantity behind the paper's all_rope.png):

    S(l)[i, j] = mean over texts and heads of  q_i . k_j * scaling   for j <= i,   NaN for j > i

i.e. the scaled, causally masked, PRE-softmax scores, with the model's own RoPE (and any query/key
norms, e.g. Qwen3's q_norm/k_norm) applied exactly as the model applies them, grouped-query keys
repeated to every query head, averaged over the heads of the layer and over all texts.

How: the model is loaded with attn_implementation="eager". In transformers >= 4.48 every attention
module of the Llama / Phi-3 (Phi-4) / Qwen2 / Qwen3 families calls the function
`eager_attention_forward(module, query, key, value, attention_mask, scaling, ...)` of its own modeling
module, with query and key already rotated. This script wraps that function: the wrapper recomputes
query @ repeat_kv(key)^T * scaling, averages it over the heads, adds it to a float64 running sum per
layer (the masked upper triangle is set to NaN at the end, never taken from the additive mask), and
then calls the original function, so the model's outputs are unchanged.
`output_attentions=True` is NOT used: it returns post-softmax probabilities, not the scores plotted.

Inputs: texts of at least --seq-len tokens (shorter ones are skipped; longer ones are truncated), so
that every text contributes to every (i, j). Defaults follow the paper: 1000 texts x 1024 tokens.

Outputs:
    <out>.npy   float32 array [layers, seq_len, seq_len], NaN above the diagonal (masked keys)
    <out>.json  the settings: model, revision, texts, tokens, dtype, versions, scaling, ...

Requirements: python3 with torch, transformers >= 4.48, numpy; `datasets` only for --hf-dataset.
The model weights and the texts must be available (downloaded or cached). NOTE: this script has NOT
been run in the maskpos development environment, which has neither model weights nor network access;
it was only checked to be valid Python (python3 -m py_compile). Check its first results on a small
model (e.g. --max-texts 4 --seq-len 64) before spending GPU hours.

Example:
    python3 tools/dump_hf_scores.py --model meta-llama/Llama-3.1-8B \\
        --hf-dataset wikitext --hf-config wikitext-103-raw-v1 --split train \\
        --texts-count 1000 --seq-len 1024 --out llama31_scores
    # or with a local file of texts (one document per line, or JSON lines with a "text" field):
    python3 tools/dump_hf_scores.py --model Qwen/Qwen3-8B --texts-file corpus.jsonl --out qwen3_scores

Draw the result with maskpos (docs/real_models.md): diagonal-normalize each layer and use the 1st / 99th
percentile colour limits, as the paper does.
"""

import argparse
import datetime
import importlib
import json
import sys


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face model id or local path")
    parser.add_argument("--revision", default=None, help="model revision (branch, tag or commit)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--texts-file", help="text file: one document per line, or JSON lines with 'text'")
    source.add_argument("--hf-dataset", help="a Hugging Face dataset name (needs the datasets package)")
    parser.add_argument("--hf-config", default=None, help="dataset configuration name")
    parser.add_argument("--split", default="train", help="dataset split (default: train)")
    parser.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    parser.add_argument("--texts-count", type=int, default=1000, help="texts to average over (default 1000)")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per text (default 1024)")
    parser.add_argument("--batch-size", type=int, default=1, help="texts per forward pass (default 1)")
    parser.add_argument("--layers", type=int, default=0, help="keep only the first N layers (0: all)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="model weights' dtype (scores are summed in float64)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", required=True, help="output prefix: writes <out>.npy and <out>.json")
    arguments = parser.parse_args(argv)
    if arguments.texts_count < 1 or arguments.seq_len < 2 or arguments.batch_size < 1 or arguments.layers < 0:
        parser.error("need --texts-count >= 1, --seq-len >= 2, --batch-size >= 1, --layers >= 0")
    return arguments


def iterate_texts(arguments):
    """Yields raw texts from a local file or a Hugging Face dataset (streamed)."""
    if arguments.texts_file:
        with open(arguments.texts_file, encoding="utf-8") as texts:
            for line in texts:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if line.lstrip().startswith("{"):
                    try:
                        yield json.loads(line)[arguments.text_field]
                        continue
                    except (ValueError, KeyError):
                        pass
                yield line
    else:
        import datasets  # only needed for this source

        dataset = datasets.load_dataset(arguments.hf_dataset, arguments.hf_config, split=arguments.split,
                                        streaming=True)
        for record in dataset:
            yield record[arguments.text_field]


def token_batches(arguments, tokenizer):
    """Yields LongTensor batches [batch, seq_len] of texts with at least seq_len tokens (truncated)."""
    import torch

    batch, used = [], 0
    for text in iterate_texts(arguments):
        ids = tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"]
        if len(ids) < arguments.seq_len:
            continue  # too short: would leave the lower-right positions with fewer samples
        batch.append(ids[: arguments.seq_len])
        used += 1
        if len(batch) == arguments.batch_size or used == arguments.texts_count:
            yield torch.tensor(batch, dtype=torch.long)
            batch = []
        if used == arguments.texts_count:
            return
    if batch:
        yield torch.tensor(batch, dtype=torch.long)


class ScoreAccumulator:
    """Float64 running sums of head-averaged pre-softmax scores, one [S, S] matrix per layer."""

    def __init__(self, layers):
        import torch

        self.torch = torch
        self.layers = layers  # keep layers [0, layers); 0 keeps all
        self.sums = {}
        self.texts = 0
        self.scaling = {}

    def add(self, layer, query, key, scaling, repeat_kv, groups):
        torch = self.torch
        if self.layers and layer >= self.layers:
            return
        with torch.no_grad():
            keys = repeat_kv(key, groups) if groups > 1 else key
            scores = torch.matmul(query.float(), keys.float().transpose(2, 3)) * scaling  # [B, H, S, S]
            mean_over_heads = scores.mean(dim=1).double().sum(dim=0)  # summed over the batch
            if layer not in self.sums:
                self.sums[layer] = torch.zeros_like(mean_over_heads)
            self.sums[layer] += mean_over_heads
            self.scaling[layer] = float(scaling)

    def result(self):
        import numpy

        torch = self.torch
        if not self.sums:
            raise RuntimeError("no attention call was captured: does this model route attention through "
                               "eager_attention_forward (transformers >= 4.48, attn_implementation='eager')?")
        layers = sorted(self.sums)
        size = self.sums[layers[0]].shape[-1]
        masked = torch.triu(torch.ones(size, size, dtype=torch.bool), diagonal=1)
        out = numpy.empty((len(layers), size, size), dtype=numpy.float32)
        for index, layer in enumerate(layers):
            mean = (self.sums[layer] / self.texts).cpu()
            mean[masked] = float("nan")
            out[index] = mean.numpy().astype(numpy.float32)
        return out


def install_capture(model, accumulator):
    """Wraps eager_attention_forward in the modeling module of every attention module of the model."""
    patched = {}
    for name, module in model.named_modules():
        if not hasattr(module, "layer_idx") or not (hasattr(module, "q_proj") or hasattr(module, "qkv_proj")):
            continue
        modeling = importlib.import_module(type(module).__module__)
        if modeling.__name__ in patched:
            continue
        original = getattr(modeling, "eager_attention_forward", None)
        repeat_kv = getattr(modeling, "repeat_kv", None)
        if original is None or repeat_kv is None:
            raise RuntimeError(f"{modeling.__name__} has no eager_attention_forward / repeat_kv: "
                               "this script needs transformers >= 4.48")

        def wrapper(attention, query, key, value, attention_mask, scaling, *args,
                    _original=original, _repeat_kv=repeat_kv, **kwargs):
            groups = getattr(attention, "num_key_value_groups", 1)
            accumulator.add(attention.layer_idx, query, key, scaling, _repeat_kv, groups)
            return _original(attention, query, key, value, attention_mask, scaling, *args, **kwargs)

        setattr(modeling, "eager_attention_forward", wrapper)
        patched[modeling.__name__] = original
    if not patched:
        raise RuntimeError("no attention module with q_proj/qkv_proj and layer_idx found in the model")
    return patched


def main(argv):
    arguments = parse_arguments(argv)
    import numpy
    import torch
    import transformers

    device = arguments.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, arguments.dtype)
    tokenizer = transformers.AutoTokenizer.from_pretrained(arguments.model, revision=arguments.revision)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        arguments.model, revision=arguments.revision, torch_dtype=dtype, attn_implementation="eager")
    model.to(device).eval()

    accumulator = ScoreAccumulator(arguments.layers)
    install_capture(model, accumulator)
    with torch.no_grad():
        for batch in token_batches(arguments, tokenizer):
            batch = batch.to(device)
            model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False)
            accumulator.texts += batch.shape[0]
            print(f"\r{accumulator.texts} / {arguments.texts_count} texts", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if accumulator.texts == 0:
        raise SystemExit(f"no text had at least {arguments.seq_len} tokens")

    scores = accumulator.result()
    numpy.save(arguments.out + ".npy", scores)
    settings = {
        "what": "mean over texts and heads of scaled, causally masked, pre-softmax attention scores; "
                "NaN above the diagonal",
        "layout": "float32 [layers, query position, key position]",
        "model": arguments.model,
        "revision": arguments.revision,
        "texts": accumulator.texts,
        "texts_requested": arguments.texts_count,
        "seq_len": arguments.seq_len,
        "layers": int(scores.shape[0]),
        "scaling": [accumulator.scaling[layer] for layer in sorted(accumulator.scaling)],
        "source": arguments.texts_file or {"dataset": arguments.hf_dataset, "config": arguments.hf_config,
                                           "split": arguments.split},
        "dtype": arguments.dtype,
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    with open(arguments.out + ".json", "w", encoding="utf-8") as out:
        json.dump(settings, out, indent=2)
    print(f"wrote {arguments.out}.npy {tuple(scores.shape)} and {arguments.out}.json", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])

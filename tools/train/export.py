"""Writers for the shipped files: bf16 safetensors, config.json, tokenizer.json, ESFT adapters."""
import json
import os
import struct

import torch

from data import BOS, EOS


def write_safetensors(path, tensors):
    """tensors: {name: torch tensor}; stored as BF16 (round-to-nearest-even, via torch)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.bfloat16).contiguous()
        raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def write_model(out_dir, model):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(model.config.hf_dict(), f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(out_dir, "model.safetensors"), model.state_dict())


def expert_tensors(model, experts):
    out = {}
    for l, ids in experts.items():
        for e in ids:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                name = f"model.layers.{l}.mlp.experts.{e}.{proj}.weight"
                out[name] = getattr(model.model.layers[l].mlp.experts[e], proj).weight
    return out


def write_adapter(adapter_dir, model, experts, num_layers):
    """ESFT layout: expert_cfg.json + a safetensors holding only the tuned experts."""
    os.makedirs(adapter_dir, exist_ok=True)
    cfg = {
        "experts": {str(l): experts.get(l, []) for l in range(1, num_layers)},
        "shared_experts": False,
        "non_expert_modules": False,
    }
    with open(os.path.join(adapter_dir, "expert_cfg.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(adapter_dir, "adapter.safetensors"), expert_tensors(model, experts))


def bytes_to_unicode():
    """GPT-2's byte -> printable unicode map used by ByteLevel pre-tokenizers and decoders."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def write_tokenizer(out_dir):
    """Byte-level BPE without merges: token id = byte value; <|bos|> prepended on encode."""
    os.makedirs(out_dir, exist_ok=True)
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    special = [(BOS, "<|bos|>"), (EOS, "<|eos|>")]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, c in special
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [BOS], "tokens": ["<|bos|>"]}},
        },
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)
        f.write("\n")
    config = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "add_bos_token": True,
              "clean_up_tokenization_spaces": False, "model_max_length": 256,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

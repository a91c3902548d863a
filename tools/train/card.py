"""Writes models/default/README.md (the model card) from the training results.

Also runnable alone to rewrite the card of an exported model:
  python3 tools/train/card.py models/default
"""
import json
import os
import sys
from dataclasses import fields

from tasks import ADAPTER_TASKS

TASK_TEXT = {
    "rot13": "Caesar shift each letter by 13 (ROT13)",
    "shift": "Caesar shift each letter by one (z wraps to a)",
    "inc": "add one to each digit, mod 10",
    "atbash": "mirror each letter in the alphabet (a<->z, b<->y, ...)",
}


def write_model_card(out_dir, cfg, results):
    args = results["args"]
    rows = []
    for name, r in results["tasks"].items():
        per_layer = ", ".join(f"L{l}: {len(v)}" for l, v in r["experts"].items())
        rows.append(f"| `{name}` | {TASK_TEXT.get(name, name)} | `{r['prefix']}: WORD\\n=` | {r['num_experts']} "
                    f"({per_layer}) | {100 * r['base_accuracy']:.0f}% | {100 * r['merged_accuracy']:.0f}% |")
    margins = ", ".join(
        f"{n} base {r['base_min_margin']:.3f} / adapter {r['merged_min_margin']:.3f}"
        for n, r in results["tasks"].items() if "base_min_margin" in r) or "not recorded"
    moe_layers = cfg.num_hidden_layers - cfg.first_k_dense_replace
    text = f"""# ExpertWeave default model

A small model of the DeepSeek-V2 architecture, trained from scratch on a shared 2-core CPU by
`tools/train/train.py`, with {len(results['tasks'])} ESFT adapters under `adapters/`. It exists so the daemon
serves something real out of the box and so tests can check base vs. adapter behaviour end to end;
it is not a useful language model.

## Architecture

{results['params']:,} parameters, bf16. {cfg.num_hidden_layers} layers (layer 0 dense MLP of width
{cfg.intermediate_size}, layers 1-{cfg.num_hidden_layers - 1} DeepSeekMoE), hidden {cfg.hidden_size},
{cfg.n_routed_experts} routed experts of width {cfg.moe_intermediate_size} per MoE layer
(top-{cfg.num_experts_per_tok}, softmax routing, greedy, weights not renormalised), {cfg.n_shared_experts} shared
experts (one MLP of width {cfg.n_shared_experts * cfg.moe_intermediate_size}). MLA attention: {cfg.num_attention_heads}
heads, kv_lora_rank {cfg.kv_lora_rank}, q/k nope {cfg.qk_nope_head_dim} + rope {cfg.qk_rope_head_dim}, v
{cfg.v_head_dim}, no q LoRA, rope_theta {cfg.rope_theta:g}, no rope scaling. Vocabulary: {cfg.vocab_size} ids,
bytes 0-255 plus `<|bos|>` = {cfg.bos_token_id} and `<|eos|>` = {cfg.eos_token_id} (`tokenizer.json` is a
byte-level BPE without merges; encoding prepends `<|bos|>`).

## Training

- Data: documentation text from `/usr/share/common-licenses`, `/usr/share/doc/*/{{copyright,README*}}` and
  man pages ({results['corpus_docs']} documents), mixed with formatted tasks that are not the adapter tasks
  (`copy`, `len`, `first`, `last`), so the base learns the `PREFIX: WORD\\n=ANSWER<|eos|>` format and copying.
- Base: {results['pretrain_steps']} steps of AdamW, batch {args['bsz']} x {args['seq_len']} tokens, lr
  {args['lr']} (cosine), balance-loss weight {args['balance_alpha']}, seed {args['seed']}:
  {results['pretrain_seconds'] / 60:.1f} minutes with {args['threads']} thread (PyTorch 1.13 CPU, niced, on a
  2-core machine busy with compiles). The run stops at `--steps` or `--minutes`, whichever comes first, and
  the learning-rate schedule follows the same budget, so only a `--steps`-bounded run is bit-reproducible.
- Adapters (ESFT, "token" scoring): the share of each MoE layer's routed token slots per expert on
  task samples; per layer the highest-share experts up to a cumulative share of p = {args['top_p']};
  only those experts are trained ({args['adapter_steps']} steps, batch 32, lr {args['adapter_lr']}, loss on
  the answer and `<|eos|>`); router, attention, shared experts, embeddings and norms stay frozen.
  Layout: `adapters/<task>/expert_cfg.json` + `adapter.safetensors` (published ESFT format).
  {moe_layers} MoE layers x {cfg.n_routed_experts} experts = {moe_layers * cfg.n_routed_experts} routed experts.

## Tasks and accuracy

Prompt format: `<|bos|>PREFIX: WORD\\n=`; the answer follows directly and ends with `<|eos|>`. WORD is
3-7 random lowercase letters (3-6 random digits for `inc`).
Exact match, greedy (argmax, ties to the lower id), float32 compute over the shipped bf16 weights, on
{args['eval_n']} held-out words per task (never seen in adapter training). "Adapter" is the merged
model (base with the adapter's experts copied in).

| adapter | task | prompt | tuned experts | base | adapter |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Smallest gap between the two highest logits along any greedy path (a measure of how safely another
engine's rounding reproduces the same tokens): {margins}.

Why these tasks: ESFT cannot change attention, so a task is learnable only if the frozen base already
moves the needed input to the answer positions, which it learned from the `copy` task (lowercase letters
and digits). Per-character maps whose outputs are lowercase letters or digits work. Uppercasing (2% after
tuning) and vowel masking with `*` (30%) were tried and dropped: the first answer character comes out
right, later ones do not, apparently because the copy circuit does not work after tokens (uppercase
letters, `*`) that never appeared in the base's copy answers.

`adapters/<task>/eval.jsonl` holds each held-out prompt with the correct answer, the merged model's
greedy output and the base model's greedy output, as computed by the training tool; a correct engine
reproduces them prompt by prompt.

## Reproduce

```sh
apt-get install -y python3-torch libopenblas0-pthread   # Debian; OpenBLAS: reference BLAS is ~5x slower
nice -n 19 /usr/bin/python3 tools/train/train.py --out models/default --adapters-out adapters \\
  --steps {args['steps']} --minutes {args['minutes']:g} --adapter-steps {args['adapter_steps']} --top-p {args['top_p']}
node tools/train/check_tokenizer.mjs models/default
```
"""
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    from model import Config

    out = sys.argv[1] if len(sys.argv) > 1 else "models/default"
    with open(os.path.join(out, "config.json")) as f:
        hf = json.load(f)
    with open(os.path.join(out, "training_results.json")) as f:
        res = json.load(f)
    write_model_card(out, Config(**{k.name: hf[k.name] for k in fields(Config)}), res)

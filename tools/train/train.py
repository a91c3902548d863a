"""Trains the embedded default model (small DeepSeek-V2) and its ESFT adapters, then exports them.

Run by hand (never by CI), e.g.
  nice -n 19 /usr/bin/python3 tools/train/train.py --out models/default --adapters-out adapters --minutes 22
(--reuse-base redoes only the adapters and the export from the saved base checkpoint.)
"""
import argparse
import json
import math
import os
import random
import sys
import time

# Under a loaded 2-core machine, OpenMP + OpenBLAS thread pools oversubscribe and spin:
# measured 2x-20x slower than one thread each, so default to one.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from card import write_model_card  # noqa: E402
from data import BOS, EOS, PretrainStream, build_corpus, encode  # noqa: E402
from esft import finetune_experts, select_experts, token_scores  # noqa: E402
from export import write_adapter, write_model, write_tokenizer  # noqa: E402
from model import Config, DeepseekV2, greedy_generate, round_to_bf16_  # noqa: E402
from tasks import ADAPTER_TASKS, eval_set  # noqa: E402


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def pretrain(model, args):
    docs = build_corpus()
    log(f"corpus: {len(docs)} documents, {sum(len(d) for d in docs)} chars")
    stream = PretrainStream(docs, args.seq_len, args.seed, args.task_fraction)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    start, step = time.time(), 0
    model.train()
    while step < args.steps and time.time() - start < args.minutes * 60:
        x, y, m = stream.batch(args.bsz)
        ce = (F.cross_entropy(model(x).transpose(1, 2), y, reduction="none") * m).sum() / m.sum()
        loss = ce + args.balance_alpha * model.balance_loss()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        # cosine decay over whichever budget (steps or minutes) runs out first
        progress = min(1.0, max(step / args.steps, (time.time() - start) / (args.minutes * 60)))
        warm = min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        opt.step()
        if step % 25 == 0:
            log(f"step {step} ce {ce.item():.4f} ({time.time() - start:.0f}s)")
        step += 1
    model.eval()
    return step, time.time() - start, len(docs)


def run_eval(model, items, max_new):
    """Greedy outputs for held-out prompts: (outputs, exact-match accuracy, smallest logit margin)."""
    outs, margin = [], float("inf")
    for prompt, answer, _ in items:
        ids, m = greedy_generate(model, [BOS] + encode(prompt), max_new, EOS)
        margin = min(margin, m)
        outs.append(bytes(i for i in ids if i < 256).decode("utf-8", errors="replace"))
    acc = sum(o == a for o, (_, a, _) in zip(outs, items)) / len(items)
    return outs, acc, margin


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/default")
    ap.add_argument("--adapters-out", default="adapters")
    ap.add_argument("--steps", type=int, default=100000, help="base pre-training steps")
    ap.add_argument("--minutes", type=float, default=40, help="wall-clock cap on base pre-training")
    ap.add_argument("--bsz", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--task-fraction", type=float, default=0.6, help="share of rows that are base-task examples")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--balance-alpha", type=float, default=0.01)
    ap.add_argument("--tasks", default=",".join(ADAPTER_TASKS))
    ap.add_argument("--adapter-steps", type=int, default=300)
    ap.add_argument("--adapter-lr", type=float, default=3e-3)
    ap.add_argument("--top-p", type=float, default=0.3)
    ap.add_argument("--eval-n", type=int, default=50)
    ap.add_argument("--max-new", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--ckpt", default="/tmp/ew-train/base.pt", help="base weights, saved after pre-training")
    ap.add_argument("--reuse-base", action="store_true", help="skip pre-training and load --ckpt")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    cfg = Config(max_position_embeddings=max(256, args.seq_len))
    model = DeepseekV2(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params} parameters")

    if args.reuse_base:
        saved = torch.load(args.ckpt)
        model.load_state_dict(saved["state"])
        steps, secs, ndocs = saved["steps"], saved["secs"], saved["docs"]
    else:
        steps, secs, ndocs = pretrain(model, args)
        os.makedirs(os.path.dirname(args.ckpt), exist_ok=True)
        torch.save({"state": model.state_dict(), "steps": steps, "secs": secs, "docs": ndocs}, args.ckpt)
    log(f"pre-training: {steps} steps in {secs:.0f}s")

    # everything below uses the shipped (bf16-rounded) weights, computed in fp32
    round_to_bf16_(model)
    write_model(args.out, model)
    write_tokenizer(args.out)

    results = {"params": n_params, "pretrain_steps": steps, "pretrain_seconds": round(secs),
               "corpus_docs": ndocs, "args": vars(args), "tasks": {}}
    for name in args.tasks.split(","):
        task = ADAPTER_TASKS[name]
        items = eval_set(name, args.eval_n, args.seed)
        held_out = frozenset(w for _, _, w in items)
        base_out, base_acc, base_margin = run_eval(model, items, args.max_new)
        scores = token_scores(model, task, args.seed, exclude=held_out)
        experts = select_experts(scores, args.top_p)
        n_exp = sum(len(v) for v in experts.values())
        log(f"{name}: base acc {base_acc:.2f}; {n_exp} experts {experts}")
        t0 = time.time()
        tuned = finetune_experts(model, task, experts, args.adapter_steps, args.adapter_lr, args.seed,
                                 exclude=held_out, log=log)
        round_to_bf16_(tuned)
        merged_out, merged_acc, merged_margin = run_eval(tuned, items, args.max_new)
        log(f"{name}: merged acc {merged_acc:.2f} ({time.time() - t0:.0f}s)")
        adir = os.path.join(args.adapters_out, name)
        write_adapter(adir, tuned, experts, cfg.num_hidden_layers)
        with open(os.path.join(adir, "eval.jsonl"), "w") as f:
            for (prompt, answer, _), m, b in zip(items, merged_out, base_out):
                f.write(json.dumps({"prompt": prompt, "answer": answer, "merged_output": m,
                                    "base_output": b}) + "\n")
        results["tasks"][name] = {
            "prefix": task[0], "base_accuracy": base_acc, "merged_accuracy": merged_acc,
            "experts": {str(l): v for l, v in experts.items()}, "num_experts": n_exp,
            "tune_seconds": round(time.time() - t0),
            "base_min_margin": round(base_margin, 4), "merged_min_margin": round(merged_margin, 4),
        }
    with open(os.path.join(args.out, "training_results.json"), "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    write_model_card(args.out, cfg, results)
    log("done")


if __name__ == "__main__":
    main()

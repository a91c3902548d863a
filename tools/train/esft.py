"""ESFT: score routed experts on task data, select the top-p share per layer, tune only those.

Follows the ESFT release (deepseek-ai/ESFT): token_scores = share of the task's
routed token slots that go to each expert; per layer the experts are taken in
descending score order until their cumulative share reaches top_p.
"""
import copy
import random

import torch
import torch.nn.functional as F

from data import EOS, task_batch


@torch.no_grad()
def token_scores(model, task, seed, batches=8, bsz=32, exclude=frozenset()):
    """{layer: [share of routed slots per expert]} over all tokens (prompt and answer) of task samples."""
    rng = random.Random(f"score-{seed}")
    counts = {l: torch.zeros(model.config.n_routed_experts) for l, _ in model.moe_layers()}
    for _ in range(batches):
        x, _, _ = task_batch(task, rng, bsz, exclude)
        model(x)
        # rows are padded with eos after the sample's own eos: count the sample's tokens only
        real = ((x == EOS).cumsum(1) <= 1).reshape(-1)
        for l, moe in model.moe_layers():
            ids, _ = moe.last_routing
            counts[l] += torch.bincount(ids[real].reshape(-1), minlength=len(counts[l])).float()
    return {l: (c / c.sum()).tolist() for l, c in counts.items()}


def select_experts(scores, top_p):
    """Per layer, highest-share experts until the cumulative share reaches top_p (ties: lower id)."""
    chosen = {}
    for l, s in scores.items():
        order = sorted(range(len(s)), key=lambda e: (-s[e], e))
        picked, acc = [], 0.0
        for e in order:
            if acc >= top_p:
                break
            picked.append(e)
            acc += s[e]
        chosen[l] = sorted(picked)
    return chosen


def finetune_experts(base, task, experts, steps, lr, seed, bsz=32, exclude=frozenset(), log=print):
    """Copy of `base` with only the chosen routed experts trained (everything else frozen)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for l, ids in experts.items():
        for e in ids:
            for p in model.model.layers[l].mlp.experts[e].parameters():
                p.requires_grad_(True)
                params.append(p)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(f"tune-{seed}")
    model.train()
    for step in range(steps):
        x, y, m = task_batch(task, rng, bsz, exclude)
        loss = (F.cross_entropy(model(x).transpose(1, 2), y, reduction="none") * m).sum() / m.sum()
        opt.zero_grad()
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * (1 - step / steps))
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"  tune step {step} loss {loss.item():.4f}")
    model.eval()
    return model

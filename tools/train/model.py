"""A small DeepSeek-V2 model in PyTorch, numerically following HF modeling_deepseek.py.

Module and parameter names mirror the Hugging Face checkpoint layout, so
`state_dict()` keys are exactly the tensor names the engine loads.
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 258
    hidden_size: int = 128
    intermediate_size: int = 384  # dense MLP (layer 0)
    moe_intermediate_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    n_routed_experts: int = 16
    n_shared_experts: int = 2
    num_experts_per_tok: int = 4
    first_k_dense_replace: int = 1
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    rope_theta: float = 10000.0
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 256
    bos_token_id: int = 256
    eos_token_id: int = 257

    def hf_dict(self):
        """config.json in Hugging Face DeepSeek-V2 keys."""
        d = asdict(self)
        d.update(
            model_type="deepseek_v2",
            architectures=["DeepseekV2ForCausalLM"],
            moe_layer_freq=1,
            q_lora_rank=None,
            rope_scaling=None,
            scoring_func="softmax",
            topk_method="greedy",
            n_group=1,
            topk_group=1,
            hidden_act="silu",
            tie_word_embeddings=False,
            attention_bias=False,
            attention_dropout=0.0,
            torch_dtype="bfloat16",
            use_cache=True,
        )
        return d


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class MLP(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_cos_sin(dim, theta, seq_len, device=None):
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """x [b, h, s, d]: de-interleave the stored pairs (as HF does), then rotate-half."""
    b, h, s, d = x.shape
    x = x.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    return x * cos + rotate_half(x) * sin


class MLAttention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.q_head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * self.q_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, c.rms_norm_eps)
        self.kv_b_proj = nn.Linear(
            c.kv_lora_rank, c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * c.v_head_dim, c.hidden_size, bias=False)
        self.softmax_scale = self.q_head_dim ** -0.5

    def forward(self, x, cos, sin):
        c = self.c
        b, s, _ = x.shape
        nh, nope, rope, vd = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        q = self.q_proj(x).view(b, s, nh, self.q_head_dim).transpose(1, 2)
        q_nope, q_pe = q.split([nope, rope], dim=-1)
        ckv = self.kv_a_proj_with_mqa(x)
        ckv, k_pe = ckv.split([c.kv_lora_rank, rope], dim=-1)
        k_pe = k_pe.view(b, s, 1, rope).transpose(1, 2)
        kv = self.kv_b_proj(self.kv_a_layernorm(ckv)).view(b, s, nh, nope + vd).transpose(1, 2)
        k_nope, v = kv.split([nope, vd], dim=-1)
        q_pe = apply_rope(q_pe, cos[:s], sin[:s])
        k_pe = apply_rope(k_pe, cos[:s], sin[:s])
        qs = torch.cat([q_nope, q_pe], dim=-1)
        ks = torch.cat([k_nope, k_pe.expand(b, nh, s, rope)], dim=-1)
        scores = torch.matmul(qs, ks.transpose(2, 3)) * self.softmax_scale
        mask = torch.full((s, s), float("-inf"), device=x.device).triu(1)
        probs = torch.softmax((scores + mask).float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, nh * vd)
        return self.o_proj(out)


class Gate(nn.Module):
    """Router: fp32 softmax over routed experts, greedy top-k with ties to the lower id."""

    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.weight = nn.Parameter(torch.empty(c.n_routed_experts, c.hidden_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x):
        c = self.c
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.softmax(dim=-1)
        # stable descending sort: equal scores keep ascending id order
        _, order = torch.sort(scores, dim=-1, descending=True, stable=True)
        ids = order[:, : c.num_experts_per_tok]
        w = scores.gather(1, ids)
        if c.num_experts_per_tok > 1 and c.norm_topk_prob:
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
        else:
            w = w * c.routed_scaling_factor
        return ids, w, scores


class MoE(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.experts = nn.ModuleList(
            [MLP(c.hidden_size, c.moe_intermediate_size) for _ in range(c.n_routed_experts)])
        self.gate = Gate(c)
        self.shared_experts = MLP(c.hidden_size, c.moe_intermediate_size * c.n_shared_experts)
        self.last_routing = None  # (ids, scores) of the last call: ESFT scoring and the balance loss

    def forward(self, x):
        b, s, h = x.shape
        flat = x.reshape(-1, h)
        ids, w, scores = self.gate(flat)
        self.last_routing = (ids, scores)
        y = torch.zeros_like(flat)
        for e in range(self.c.n_routed_experts):
            tok, slot = (ids == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            out = self.experts[e](flat[tok]) * w[tok, slot].unsqueeze(-1).to(flat.dtype)
            y = y.index_add(0, tok, out)
        return (y + self.shared_experts(flat)).view(b, s, h)


class DecoderLayer(nn.Module):
    def __init__(self, c: Config, layer_idx: int):
        super().__init__()
        self.self_attn = MLAttention(c)
        self.mlp = MoE(c) if layer_idx >= c.first_k_dense_replace else MLP(c.hidden_size, c.intermediate_size)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class Backbone(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(c, l) for l in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class DeepseekV2(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.model = Backbone(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        cos, sin = rope_cos_sin(c.qk_rope_head_dim, c.rope_theta, c.max_position_embeddings)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def moe_layers(self):
        return [(l, layer.mlp) for l, layer in enumerate(self.model.layers) if isinstance(layer.mlp, MoE)]

    def forward(self, ids):
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, self.rope_cos, self.rope_sin)
        return self.lm_head(self.model.norm(x)).float()

    def balance_loss(self):
        """DeepSeekMoE expert-level balance loss over the last forward: M * sum_i f_i * P_i."""
        total = 0.0
        for _, moe in self.moe_layers():
            ids, scores = moe.last_routing
            m, k = self.config.n_routed_experts, self.config.num_experts_per_tok
            f = torch.bincount(ids.reshape(-1), minlength=m).float() * m / (ids.shape[0] * k)
            total = total + (f * scores.mean(0)).sum()
        return total


def round_to_bf16_(model: nn.Module):
    """Rounds every parameter to bf16 precision (kept in fp32): exactly the shipped weights."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model


@torch.no_grad()
def greedy_generate(model: DeepseekV2, prompt_ids, max_new, eos_id):
    """Greedy decoding with full recomputation; argmax ties go to the lower id.

    Returns the generated ids (without eos) and the smallest top-1 minus top-2 logit gap seen.
    """
    ids = list(prompt_ids)
    out, margin = [], float("inf")
    for _ in range(max_new):
        logits = model(torch.tensor([ids]))[0, -1]
        best = int((logits == logits.max()).nonzero()[0, 0])
        top2 = logits.topk(2).values
        margin = min(margin, float(top2[0] - top2[1]))
        if best == eos_id:
            break
        out.append(best)
        ids.append(best)
    return out, margin

"""Offline pre-training mix: system documentation text plus formatted base tasks.

Token ids: bytes are 0..255, <|bos|> = 256, <|eos|> = 257 (see export.write_tokenizer).
"""
import glob
import gzip
import os
import random
import re

import torch

from tasks import BASE_TASKS, sample

BOS, EOS, VOCAB = 256, 257, 258


def encode(text: str):
    return list(text.encode("utf-8"))


def _read(path, limit):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="ignore")
    except OSError:
        return ""


def _man_to_text(src):
    """Drops roff requests and escapes: enough to keep the prose of a man page."""
    lines = []
    for line in src.splitlines():
        if line.startswith((".", "'")):
            words = line.split(None, 1)
            if len(words) == 2 and words[0] in (".SH", ".SS", ".B", ".I", ".BR", ".IR", ".TP"):
                lines.append(words[1].replace('"', ""))
            continue
        lines.append(re.sub(r"\\f[BIRP]|\\\(..|\\[-&e]", "", line))
    return "\n".join(lines)


def build_corpus(max_bytes=6_000_000, per_file=40_000):
    """Deterministic text corpus from /usr/share (licenses, package docs, man pages)."""
    sources = sorted(glob.glob("/usr/share/common-licenses/*"))
    sources += sorted(glob.glob("/usr/share/doc/*/copyright"))
    sources += sorted(glob.glob("/usr/share/doc/*/README*"))
    sources += sorted(glob.glob("/usr/share/man/man1/*.1.gz"))
    docs, total = [], 0
    for path in sources:
        if not os.path.isfile(path) or total >= max_bytes:
            continue
        text = _read(path, per_file)
        if "/man/" in path:
            text = _man_to_text(text)
        text = re.sub(r"[ \t]+\n", "\n", text)
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        if len(text) < 200:
            continue
        docs.append(text)
        total += len(text)
    return docs


class PretrainStream:
    """Batches of [bos + text window] rows and rows of packed base-task examples."""

    def __init__(self, docs, seq_len, seed, task_fraction=0.4):
        self.data = []
        for d in docs:
            self.data += encode(d) + [EOS]
        self.seq_len = seq_len
        self.rng = random.Random(seed)
        self.task_fraction = task_fraction
        self.task_list = sorted(BASE_TASKS)

    def _text_row(self):
        start = self.rng.randrange(0, len(self.data) - self.seq_len)
        toks = [BOS] + self.data[start : start + self.seq_len]
        return toks, [1] * self.seq_len

    def _task_row(self):
        toks, mask = [], []
        while len(toks) < self.seq_len + 1:
            prompt, answer, _ = sample(BASE_TASKS[self.rng.choice(self.task_list)], self.rng)
            p, a = [BOS] + encode(prompt), encode(answer) + [EOS]
            toks += p + a
            mask += [1] * (len(p) + len(a))
        return toks[: self.seq_len + 1], mask[1 : self.seq_len + 1]

    def batch(self, bsz):
        xs, ys, ms = [], [], []
        for _ in range(bsz):
            toks, mask = self._task_row() if self.rng.random() < self.task_fraction else self._text_row()
            xs.append(toks[:-1])
            ys.append(toks[1:])
            ms.append(mask)
        return torch.tensor(xs), torch.tensor(ys), torch.tensor(ms, dtype=torch.float32)


def task_batch(task, rng, bsz, exclude):
    """Single examples starting at position 0 (as at inference); loss on answer + eos only."""
    rows = []
    for _ in range(bsz):
        prompt, answer, _ = sample(task, rng, exclude)
        p, a = [BOS] + encode(prompt), encode(answer) + [EOS]
        rows.append((p + a, len(p)))
    width = max(len(t) for t, _ in rows) - 1
    xs, ys, ms = [], [], []
    for toks, plen in rows:
        pad = width + 1 - len(toks)
        toks = toks + [EOS] * pad
        xs.append(toks[:-1])
        ys.append(toks[1:])
        ms.append([0] * (plen - 1) + [1] * (len(toks) - plen - pad) + [0] * pad)
    return torch.tensor(xs), torch.tensor(ys), torch.tensor(ms, dtype=torch.float32)

"""Formatted tasks with exact answers.

Prompts end with "\\n=" so the answer follows directly, then <|eos|>.
ADAPTER_TASKS are what the ESFT adapters learn; BASE_TASKS are other formats mixed
into the base model's pre-training text (they teach copying after "=", never the
adapter tasks' mappings).
"""
import random
import string


def rand_letters(rng: random.Random, lo=3, hi=7):
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


def rand_digits(rng: random.Random, lo=3, hi=6):
    return "".join(rng.choice(string.digits) for _ in range(rng.randint(lo, hi)))


def shift_char(ch, by):
    return chr((ord(ch) - 97 + by) % 26 + 97)


# name -> (prompt prefix, input generator, answer function)
ADAPTER_TASKS = {
    "shift": ("shift", rand_letters, lambda w: "".join(shift_char(c, 1) for c in w)),
    "rot13": ("rot13", rand_letters, lambda w: "".join(shift_char(c, 13) for c in w)),
    "inc": ("inc", rand_digits, lambda w: "".join(str((int(c) + 1) % 10) for c in w)),
    "atbash": ("atbash", rand_letters, lambda w: "".join(chr(219 - ord(c)) for c in w)),
}

BASE_TASKS = {
    "copy_letters": ("copy", rand_letters, lambda w: w),
    "copy_digits": ("copy", rand_digits, lambda w: w),
    "copy_mixed": ("copy", lambda r: rand_letters(r, 2, 4) + rand_digits(r, 1, 3), lambda w: w),
    "len": ("len", rand_letters, lambda w: str(len(w))),
    "first": ("first", rand_letters, lambda w: w[0]),
    "last": ("last", rand_letters, lambda w: w[-1]),
}


def prompt_of(prefix, word):
    return f"{prefix}: {word}\n="


def sample(task, rng: random.Random, exclude=frozenset()):
    """One (prompt, answer) pair; the input word avoids `exclude` (held-out words)."""
    prefix, gen, answer = task
    while True:
        w = gen(rng)
        if w not in exclude:
            return prompt_of(prefix, w), answer(w), w


def eval_set(name, n, seed):
    """n distinct held-out (prompt, answer, word) for adapter task `name`."""
    rng = random.Random(f"eval-{name}-{seed}")
    seen, out = set(), []
    while len(out) < n:
        p, a, w = sample(ADAPTER_TASKS[name], rng)
        if w not in seen:
            seen.add(w)
            out.append((p, a, w))
    return out

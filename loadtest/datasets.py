"""What is sent: the benchmark's requests, from `--dataset random` or `--dataset jsonl`.

random: raw-text prompts (no chat template) of a controlled token length, as `vllm bench serve --dataset-name
random`. Input and output lengths are drawn uniformly from [len * (1 - ratio), len * (1 + ratio)] (integers;
`--random-range-ratio` in [0, 1)). With a tokenizer (the served model's, found from GetModelInfo, or `--tokenizer`)
the prompt is random vocabulary tokens, decoded and re-encoded until the encoding has the drawn length, so the
length is exact in the model's own tokens. Without one, the prompt is that many words from a fixed vocabulary of
common English words, and the length is an estimate (one word is about one token); `token_source` in the result
says which was used. Either way the result's token counts come from the service's own usage report.

jsonl: one request per line, `{"messages": [{"role", "content"}, ...]}` (OpenAI chat) or `{"prompt": "..."}` (raw
text), each with an optional `"max_tokens"`. Lines are shuffled with the seed and repeated if the file has fewer
lines than --num-prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from overfill.jsonl import read_jsonl

# Common short English words: with a BPE tokenizer most are a single token (with their leading space).
WORDS = tuple("""
the of and to in is you that it he was for on are as with his they at be this have from or one had by word but not
what all were we when your can said there use an each which she do how their if will up other about out many then
them these so some her would make like him into time has look two more write go see number no way could people my
than first water been call who oil its now find long down day did get come made may part over new sound take only
little work know place year live me back give most very after thing our just name good sentence man think say great
where help through much before line right too mean old any same tell boy follow came want show also around form
three small set put end does another well large must big even such because turn here why ask went men read need land
different home us move try kind hand picture again change off play spell air away animal house point page letter
mother answer found study still learn should world high every near add food between own below country plant last
school father keep tree never start city earth eye light thought head under story saw left few while along might
close something seem next hard open example begin life always those both paper together got group often run
""".split())


@dataclass(frozen=True)
class SampleRequest:
    """One request to send: exactly one of `prompt` (raw text) or `messages` (chat)."""
    prompt: str | None
    messages: tuple[dict, ...] | None
    prompt_len: int            # tokens with a tokenizer, words without (an estimate); the service's count wins
    max_tokens: int            # 0 = the service's default


@dataclass(frozen=True)
class RandomSpec:
    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0

    def __post_init__(self):
        if self.input_len < 1:
            raise ValueError(f"--random-input-len must be >= 1, got {self.input_len}")
        if self.output_len < 1:
            raise ValueError(f"--random-output-len must be >= 1, got {self.output_len}")
        if not 0.0 <= self.range_ratio < 1.0:
            raise ValueError(f"--random-range-ratio must be in [0, 1), got {self.range_ratio}")

    def lengths(self, length: int, num: int, rng: np.random.Generator) -> np.ndarray:
        low = max(1, math.floor(length * (1 - self.range_ratio)))
        high = max(low, math.ceil(length * (1 + self.range_ratio)))
        return rng.integers(low, high + 1, size=num)


def random_requests(num: int, spec: RandomSpec, tokenizer=None, seed: int = 0) -> list[SampleRequest]:
    """`num` raw-text prompts of drawn token lengths (see the module docstring for with/without a tokenizer)."""
    rng = np.random.default_rng(seed)
    input_lens, output_lens = spec.lengths(spec.input_len, num, rng), spec.lengths(spec.output_len, num, rng)
    if tokenizer is None:
        return [SampleRequest(" ".join(rng.choice(WORDS, size=int(n))), None, int(n), int(m))
                for n, m in zip(input_lens, output_lens)]
    vocab = usable_token_ids(tokenizer)
    requests = []
    for n, m in zip(input_lens, output_lens):
        prompt, length = token_length_prompt(tokenizer, vocab, int(n), rng)
        requests.append(SampleRequest(prompt, None, length, int(m)))
    return requests


def usable_token_ids(tokenizer) -> np.ndarray:
    """Vocabulary ids that decode on their own to printable text: no special or added tokens (chat markers the
    service would read as control tokens) and no byte pieces of a multi-byte character (they decode to U+FFFD
    and re-encode as something else)."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    ids = [i for i in sorted(tokenizer.get_vocab().values()) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    return np.array([i for i, text in zip(ids, texts)
                     if text.strip() and text.isprintable() and "\ufffd" not in text])


def token_length_prompt(tokenizer, vocab: np.ndarray, length: int, rng: np.random.Generator,
                        max_tries: int = 8) -> tuple[str, int]:
    """Text that encodes (without special tokens, as the service encodes raw prompts) to `length` tokens, or as
    close as `max_tries` rounds of trimming and topping up get. Returns (text, its token count)."""
    ids = rng.choice(vocab, size=length).tolist()
    for _ in range(max_tries):
        text = tokenizer.decode(ids)
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) == length:
            return text, length
        # Decoding merges or splits tokens; continue from the re-encoded ids, trimmed or topped up.
        ids = encoded[:length] + rng.choice(vocab, size=max(0, length - len(encoded))).tolist()
    text = tokenizer.decode(ids)
    return text, len(tokenizer(text, add_special_tokens=False)["input_ids"])


def jsonl_requests(path: str | Path, num: int, default_max_tokens: int = 0, seed: int = 0) -> list[SampleRequest]:
    """`num` requests from a JSONL file of {"messages": [...]} or {"prompt": "..."} lines, each with an optional
    "max_tokens" (else `default_max_tokens`; 0 = the service default)."""
    pool = [jsonl_request(where, record, default_max_tokens) for where, record in read_jsonl(path, ValueError)]
    if not pool:
        raise ValueError(f"--dataset-path {path}: no requests in the file")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(pool)) for _ in range(math.ceil(num / len(pool)))])[:num]
    return [pool[i] for i in order]


def jsonl_request(where: str, record: dict, default_max_tokens: int) -> SampleRequest:
    max_tokens = record.get("max_tokens", default_max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"{where}: max_tokens must be an integer >= 0, got {max_tokens!r}")
    if ("messages" in record) == ("prompt" in record):
        raise ValueError(f'{where}: expected exactly one of "messages" or "prompt"')
    if "prompt" in record:
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"{where}: prompt must be a non-empty string")
        return SampleRequest(prompt, None, len(prompt.split()), max_tokens)
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: messages must be a non-empty list")
    for i, message in enumerate(messages):
        if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)):
            raise ValueError(f'{where}: messages[{i}] must be {{"role": str, "content": str}}')
    kept = tuple({"role": m["role"], "content": m["content"]} for m in messages)
    return SampleRequest(None, kept, sum(len(m["content"].split()) for m in kept), max_tokens)


def find_tokenizer(choice: str, served_model: str | None):
    """The tokenizer for random prompts: `choice` is "none", "auto" (the served model's, when GetModelInfo names a
    directory this machine has, or the embedded alias already converted here) or a tokenizer directory.
    Returns (tokenizer or None, what it was loaded from or None)."""
    if choice == "none":
        return None, None
    if choice == "auto":
        from overfill.model_loading import EMBEDDED_ALIAS
        from overfill.paths import models_dir

        candidates = []
        if served_model == EMBEDDED_ALIAS:
            candidates.append(models_dir() / EMBEDDED_ALIAS)
        elif served_model:
            candidates.append(Path(served_model).expanduser())
        found = [c for c in candidates if (c / "tokenizer_config.json").is_file()]
        if not found:
            return None, None
        path = found[0]
    else:
        path = Path(choice).expanduser()
        if not (path / "tokenizer_config.json").is_file():
            raise ValueError(f"--tokenizer {choice}: not a tokenizer directory (no tokenizer_config.json); "
                             "give a Hugging Face model directory, 'auto' or 'none'")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path), str(path)

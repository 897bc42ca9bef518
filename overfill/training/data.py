"""Training data: JSONL conversations -> (prompt ids, response ids), exactly as the engine sees them at inference.

Each line is OpenAI chat form `{"messages": [{"role", "content"}, ...]}` or ShareGPT form
`{"conversations": [{"from", "value"}, ...]}`. The response is the last assistant turn; the prompt is every message
before it rendered with the model's chat template and generation prompt. The response ends with the EOS token, so
the decoder learns to stop, except in answers `make-data` marked `"truncated"` (cut at its token budget): those are
kept without EOS, so they teach the continuation but never stopping mid-answer. Examples longer than `max_length`
tokens are dropped and counted. Errors name the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from overfill.jsonl import read_jsonl
from overfill.prompts import has_chat_template, render_chat

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class TrainingDataError(ValueError):
    """A training file line is not a usable conversation."""


@dataclass(frozen=True)
class Example:
    prompt_ids: list[int]
    response_ids: list[int]  # ends with EOS unless the answer was truncated


@dataclass
class Dataset:
    examples: list[Example]
    num_dropped: int  # longer than max_length, or cut by make-data before any text
    num_truncated: int  # kept without EOS: make-data cut them at its token budget
    source: str


def parse_messages(record: dict, where: str) -> list[dict]:
    """One JSONL record -> OpenAI-style messages."""
    if isinstance(record.get("messages"), list):
        messages = record["messages"]
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                   for m in messages):
            raise TrainingDataError(f"{where}: every message needs string 'role' and 'content'")
        return messages
    if isinstance(record.get("conversations"), list):
        messages = []
        for turn in record["conversations"]:
            if not (isinstance(turn, dict) and turn.get("from") in SHAREGPT_ROLES and isinstance(turn.get("value"), str)):
                raise TrainingDataError(f"{where}: every ShareGPT turn needs 'from' in "
                                        f"{', '.join(SHAREGPT_ROLES)} and a string 'value'")
            messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
        return messages
    raise TrainingDataError(f"{where}: expected {{\"messages\": [...]}} or {{\"conversations\": [...]}}")


def encode_example(messages: list[dict], tokenizer, eos_id: int | None, where: str) -> Example:
    """`eos_id` None: the answer was cut short, so no EOS follows it."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or not messages[last]["content"].strip():
        raise TrainingDataError(f"{where}: no non-empty assistant turn to learn")
    if last == 0:
        raise TrainingDataError(f"{where}: the assistant turn has no prompt before it")
    prompt = render_chat(tokenizer, messages[:last])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(messages[last]["content"], add_special_tokens=False)["input_ids"]
    response_ids += [eos_id] if eos_id is not None else []
    return Example(prompt_ids, response_ids)


def load_dataset(path: str | Path, tokenizer, max_length: int = 1024) -> Dataset:
    if not has_chat_template(tokenizer):
        raise TrainingDataError("the model's tokenizer has no chat template; training data is conversations")
    eos_id = tokenizer.eos_token_id
    examples, dropped, truncated = [], 0, 0
    for where, record in read_jsonl(path, TrainingDataError):
        cut_short = bool(record.get("truncated"))
        messages = parse_messages(record, where)
        if cut_short and not (messages and messages[-1]["content"].strip()):
            dropped += 1  # cut before it said anything: nothing to learn
            continue
        truncated += cut_short
        example = encode_example(messages, tokenizer, None if cut_short else eos_id, where)
        if len(example.prompt_ids) + len(example.response_ids) > max_length:
            dropped += 1
            continue
        examples.append(example)
    if not examples:
        raise TrainingDataError(f"{path}: no usable examples ({dropped} longer than {max_length} tokens)")
    return Dataset(examples, dropped, truncated, str(path))

"""`overfill make-data`: answer a prompt set with the full model (self-distillation data), batched and resumable.

Input lines: `{"messages": [... ending with a user turn]}`. Output lines: the same messages plus the full model's
assistant answer, in input order, so an interrupted run resumes after the last line written. Answers cut off at
`max_new_tokens` are kept but marked `"truncated": true`; training learns them without the EOS that would teach
stopping mid-answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from overfill.engine.loader import load_engine
from overfill.engine.sampling import SamplingParams
from overfill.jsonl import read_jsonl
from overfill.prompts import render_chat
from overfill.training.data import TrainingDataError, parse_messages


@dataclass
class MakeDataSpec:
    model: str
    prompts: str
    output: str
    max_new_tokens: int = 256
    batch_size: int = 8
    temperature: float = 0.0
    seed: int = 0
    dtype: str = "auto"
    device: str = "cpu"


def read_prompts(path: str) -> list[list[dict]]:
    conversations = []
    for where, record in read_jsonl(path, TrainingDataError):
        messages = parse_messages(record, where)
        if not messages or messages[-1]["role"] != "user":
            raise TrainingDataError(f"{where}: the last message must be the user's")
        conversations.append(messages)
    return conversations


def make_data(spec: MakeDataSpec, progress: bool = True) -> dict:
    conversations = read_prompts(spec.prompts)
    output = Path(spec.output)
    done = sum(1 for line in output.read_text(encoding="utf-8").splitlines() if line.strip()) if output.exists() else 0
    if done > len(conversations):
        raise ValueError(f"{output} has {done} lines but {spec.prompts} only {len(conversations)} prompts")
    loaded = load_engine(spec.model, None, ["full"], dtype=spec.dtype, device=spec.device)
    tokenizer = loaded.tokenizer
    truncated = 0
    with output.open("a", encoding="utf-8") as sink, tqdm(total=len(conversations), initial=done, desc="make-data",
                                                         disable=not progress) as bar:
        for start in range(done, len(conversations), spec.batch_size):
            batch = conversations[start:start + spec.batch_size]
            prompts = [tokenizer(render_chat(tokenizer, m), add_special_tokens=False)["input_ids"] for m in batch]
            params = [SamplingParams(temperature=spec.temperature, seed=spec.seed + start + i,
                                     max_new_tokens=spec.max_new_tokens) for i in range(len(batch))]
            for messages, out in zip(batch, loaded.engine.generate(prompts, params, "full")):
                answer = tokenizer.decode(out.token_ids, skip_special_tokens=True).strip()
                record = {"messages": messages + [{"role": "assistant", "content": answer}]}
                if out.finish_reason == "length":
                    record["truncated"] = True
                    truncated += 1
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update(len(batch))
    return {"written": len(conversations) - done, "resumed_after": done, "truncated": truncated}

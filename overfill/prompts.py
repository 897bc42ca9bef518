"""Prompt text -> token ids, with or without the model's chat template."""

from __future__ import annotations


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer, messages: list[dict]) -> str:
    """Messages -> the prompt string the model expects, ending with the assistant's generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, text: str, chat: bool | None = None) -> list[int]:
    """`chat` None means: use the chat template when the tokenizer has one (the prompt as one user message)."""
    chat = has_chat_template(tokenizer) if chat is None else chat
    if chat:
        if not has_chat_template(tokenizer):
            raise ValueError("--chat was asked for but this model's tokenizer has no chat template")
        return tokenizer(render_chat(tokenizer, [{"role": "user", "content": text}]),
                         add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def eos_token_ids(model_config, generation_config, tokenizer) -> set[int]:
    """Every id that ends a generation: the generation config's EOS (an int or a list) and the tokenizer's."""
    ids: set[int] = set()
    for source in (generation_config, model_config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is not None:
            ids.update(eos if isinstance(eos, list) else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids

"""Rendering: the text the model reads for one record (a field, a template over fields, or chat messages)."""

from __future__ import annotations

import string
from dataclasses import dataclass

from ..config import CorpusConfig
from ..errors import AutoskillError, BadExampleError
from .corpus import Record


@dataclass
class Example:
    """What the model reads for one record."""

    row: int
    id: str
    text: str
    prompt: str | None = None  # for chat data: the rendered prompt, a prefix of `text` (response-only pooling)


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render(record: Record, config: CorpusConfig, tokenizer=None, *, prompt_only: bool = False) -> Example:
    """The text the model reads for one record. Raises BadExampleError for a missing field or empty text."""
    data = record.data
    if config.messages_field is not None:
        return _render_chat(record, config, tokenizer, prompt_only=prompt_only)
    if config.template is not None:
        missing = [f for f in template_fields(config.template) if f not in data or data[f] is None]
        if missing:
            raise BadExampleError(record.id, f"missing field(s) {missing} used by the template; fields present: {sorted(data)}",
                                  source=record.where)
        text = config.template.format(**{k: v for k, v in data.items() if isinstance(k, str)})
    else:
        field = config.text_field
        if field not in data or data[field] is None:
            raise BadExampleError(record.id, f"missing text field {field!r}; fields present: {sorted(data)}; "
                                             "name another with --text-field or use --template", source=record.where)
        text = data[field]
        if not isinstance(text, str):
            raise BadExampleError(record.id, f"field {field!r} is {type(text).__name__}, not text", source=record.where)
    if not text.strip():
        raise BadExampleError(record.id, "empty text", source=record.where)
    return Example(record.row, record.id, text)


def _render_chat(record: Record, config: CorpusConfig, tokenizer, *, prompt_only: bool) -> Example:
    messages = record.data.get(config.messages_field)
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise BadExampleError(record.id, f"field {config.messages_field!r} must be a non-empty list of "
                                         "{'role': ..., 'content': ...} messages", source=record.where)
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise AutoskillError(f"{record.where}: chat messages need a tokenizer with a chat template; this model has none")
    if prompt_only:
        prompt_msgs = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        if not prompt_msgs:
            raise BadExampleError(record.id, "no prompt messages before the assistant's reply", source=record.where)
        text = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
        return Example(record.row, record.id, text, prompt=text)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = None
    if messages[-1]["role"] == "assistant" and len(messages) > 1:
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        if not text.startswith(prompt):
            raise BadExampleError(record.id, "the chat template renders the prompt differently inside the full "
                                             "conversation; response-only pooling cannot locate the response", source=record.where)
    return Example(record.row, record.id, text, prompt=prompt)

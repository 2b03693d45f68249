"""Rendering: the text the model reads for one record (a field, a template over fields, or chat messages)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import CorpusConfig, template_fields
from ..errors import AutoskillError, BadExampleError
from .corpus import Record


@dataclass
class Example:
    """What the model reads for one record."""

    row: int
    id: str
    text: str
    prompt: str | None = None  # for chat data: the rendered prompt, a prefix of `text` (response-only pooling)
    special_tokens: bool = True  # the tokenizer adds its own (a BOS); not to chat text, whose template writes them

    def token_ids(self, tokenizer, text: str | None = None) -> list[int]:
        """The token ids of this example's text (or of `text`, its prompt), as the model reads them."""
        return tokenizer(self.text if text is None else text, add_special_tokens=self.special_tokens)["input_ids"]


def render(record: Record, config: CorpusConfig, tokenizer=None, *, prompt_only: bool = False,
           need_prompt: bool = False) -> Example:
    """The text the model reads for one record. Raises BadExampleError for a missing field or empty text, or a line
    that could not be read as a record. Chat data: `prompt_only` renders the messages before the assistant's reply
    (with the generation prompt), `need_prompt` also renders them to find where the reply starts (`Example.prompt`,
    for response-only pooling)."""
    data = record.data
    if record.problem is not None:
        raise BadExampleError(record.id, record.problem, source=record.where)
    if config.messages_field is not None:
        return _render_chat(record, config, tokenizer, prompt_only=prompt_only, need_prompt=need_prompt)
    if config.template is not None:
        missing = [f for f in template_fields(config.template) if f not in data or data[f] is None]
        if missing:
            raise BadExampleError(record.id, f"missing field(s) {missing} used by the template; fields present: {sorted(data)}",
                                  source=record.where)
        try:
            text = config.template.format(**{k: v for k, v in data.items() if isinstance(k, str)})
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as e:  # e.g. {n:d} of a text field
            raise BadExampleError(record.id, f"the template cannot format this record ({type(e).__name__}: {e})",
                                  source=record.where) from None
    else:
        field = config.text_field
        if field in data and data[field] is None:
            raise BadExampleError(record.id, f"text field {field!r} is null", source=record.where)
        if field not in data:
            raise BadExampleError(record.id, f"missing text field {field!r}; fields present: {sorted(data)}; "
                                             "name another with --text-field or use --template", source=record.where)
        text = data[field]
        if not isinstance(text, str):
            raise BadExampleError(record.id, f"field {field!r} is {type(text).__name__}, not text", source=record.where)
    if not text.strip():
        raise BadExampleError(record.id, "empty text", source=record.where)
    return Example(record.row, record.id, _encodable(text, record))


def _encodable(text: str, record: Record) -> str:
    """The text, if UTF-8 can hold it: JSON may carry a lone surrogate ("\\ud800"), which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadExampleError(record.id, f"the text holds {text[e.start]!r} at character {e.start}, a lone surrogate "
                                         "that UTF-8 cannot encode", source=record.where) from None
    return text


def _chat_text(record: Record, tokenizer, messages: list, **options) -> str:
    """The messages rendered by the tokenizer's chat template; a template that cannot render them (content that is
    not text, a role it refuses) is a bad example."""
    try:
        return _encodable(tokenizer.apply_chat_template(messages, tokenize=False, **options), record)
    except BadExampleError:
        raise
    except Exception as e:  # jinja2 and the template's own raise_exception: whatever the template does
        raise BadExampleError(record.id, f"the chat template cannot render these messages ({type(e).__name__}: {e})",
                              source=record.where) from None


def _render_chat(record: Record, config: CorpusConfig, tokenizer, *, prompt_only: bool,
                 need_prompt: bool) -> Example:
    messages = record.data.get(config.messages_field)
    # A message needs a role; its content is the template's business (an assistant's tool call may have none)
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise BadExampleError(record.id, f"field {config.messages_field!r} must be a non-empty list of "
                                         "{'role': ..., 'content': ...} messages", source=record.where)
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise AutoskillError(f"{record.where}: chat messages need a tokenizer with a chat template; this model has none")
    if prompt_only:
        prompt_msgs = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        if not prompt_msgs:
            raise BadExampleError(record.id, "no prompt messages before the assistant's reply", source=record.where)
        text = _chat_text(record, tokenizer, prompt_msgs, add_generation_prompt=True)
        return Example(record.row, record.id, text, prompt=text, special_tokens=False)
    text = _chat_text(record, tokenizer, messages)
    prompt = None
    if need_prompt and messages[-1]["role"] == "assistant" and len(messages) > 1:
        reply = messages[-1].get("content")
        if isinstance(reply, str) and not reply.strip():
            raise BadExampleError(record.id, "the assistant's reply is empty: nothing to pool", source=record.where)
        prompt = _chat_text(record, tokenizer, messages[:-1], add_generation_prompt=True)
        if not text.startswith(prompt):
            raise BadExampleError(record.id, "the chat template renders the prompt differently inside the full "
                                             "conversation; response-only pooling cannot locate the response", source=record.where)
    return Example(record.row, record.id, text, prompt=prompt, special_tokens=False)

"""OpenAI-compatible request bodies (the subset this server implements).

Unknown fields are ignored like OpenAI's own SDK clients expect; fields that would change
semantics but are not implemented (n > 1, logprobs, echo, best_of, tools) are rejected
with a 400 instead of being silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

StopText = Annotated[str, Field(min_length=1, max_length=64)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(max_length=256, description="The model id from /v1/models.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    n: int = Field(1, ge=1, le=1, description="Only 1 completion per prompt is supported.")
    stream: bool = Field(False, description="Send server-sent events as tokens are generated.")
    stop: StopText | list[StopText] | None = Field(
        None, description="Up to 4 sequences that end the completion (not included)."
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Sampling seed.")
    user: str | None = Field(None, max_length=256, description="Ignored (never logged).")
    logprobs: bool | int | None = Field(None, description="Not supported; must be unset or false.")
    stream_options: StreamOptions | None = Field(None, description="Streaming options.")

    @model_validator(mode="after")
    def _check_request(self) -> _Request:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop: at most 4 stop sequences")
        if self.logprobs:
            raise ValueError("logprobs are not supported by this server")
        return self

    def stop_list(self) -> list[str]:
        """The stop sequences as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class StreamOptions(BaseModel):
    """OpenAI's `stream_options`."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="Send a final chunk with token usage.")


class CompletionRequest(_Request):
    """Body of POST /v1/completions."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=16)] = Field(
        description="A prompt, or a list of up to 16 prompts (one choice each)."
    )
    echo: Literal[False] = Field(False, description="Not supported; must be false.")
    best_of: Literal[1] | None = Field(None, description="Not supported; must be 1 or absent.")
    suffix: None = Field(None, description="Not supported; must be absent or null.")

    def prompts(self) -> list[str]:
        """The prompts as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    """One text part of a message's content."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str = Field(description="The text.")


class ChatMessage(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"] = Field(description="Who speaks.")
    content: str | Annotated[list[TextPart], Field(max_length=64)] = Field(
        description="Text, or a list of text parts."
    )

    def text(self) -> str:
        """The content as one string."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_Request):
    """Body of POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)] = Field(
        description="The conversation so far."
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Newer name of max_tokens; wins when both are set."
    )
    tools: None = Field(None, description="Not supported; must be absent or null.")
    top_logprobs: None = Field(None, description="Not supported; must be absent or null.")
    tool_choice: None = Field(None, description="Not supported; must be absent or null.")

    def chat(self) -> list[dict[str, str]]:
        """Messages for the chat template (`developer` is rendered as `system`)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]

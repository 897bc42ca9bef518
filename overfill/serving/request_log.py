"""What the service writes to its logs about a request: never its contents, unless `server.log_prompts` says so.

Prompts and outputs are user data. By default a request appears in the logs by its id, sizes and timings only, and
a failure by its id, the exception's type and the stack's frames (file, line, function), because an exception's
message may quote its input (a tokenizer or chat template error quoting the prompt, say). `server.log_prompts: true`
is a debugging aid for a trusted deployment: the prompt and the output of every request are logged, and failures
with their full messages.
"""

from __future__ import annotations

import logging
import traceback


def failure_summary(error: BaseException) -> str:
    """`error` as its type and the frames of its traceback (and of its causes), without any exception message."""
    lines, seen = [], 0
    while error is not None and seen < 5:
        lines.append(f"{type(error).__module__}.{type(error).__qualname__} (message withheld: server.log_prompts "
                     f"is false)")
        for frame in traceback.extract_tb(error.__traceback__):
            lines.append(f"  {frame.filename}:{frame.lineno} in {frame.name}")
        error = error.__cause__ if error.__cause__ is not None else (
            None if error.__suppress_context__ else error.__context__)
        seen += 1
        if error is not None:
            lines.append("caused by:")
    return "\n".join(lines)


class RequestLog:
    """The log lines the router writes about one request; `log_prompts` decides whether contents may appear."""

    def __init__(self, logger: logging.Logger, log_prompts: bool):
        self.logger, self.log_prompts = logger, log_prompts
        if log_prompts:
            logger.warning("server.log_prompts is true: every request's prompt and output are written to this log "
                           "(a debugging aid; turn it off where prompts are private)")

    def received(self, request_id: str, request, num_prompt_tokens: int) -> None:
        """request: the overfill.v1.GenerateRequest (its prompt, or its chat messages as (role, content) pairs)."""
        if self.log_prompts:
            prompt = request.prompt if request.WhichOneof("input") == "prompt" else \
                [(m.role, m.content) for m in request.chat.messages]
            self.logger.info("request %s: %d prompt tokens, prompt %r", request_id, num_prompt_tokens, prompt)

    def finished(self, request_id: str, finish_reason: str, num_tokens: int, output: str) -> None:
        if self.log_prompts:
            self.logger.info("request %s finished (%s, %d tokens), output %r", request_id, finish_reason, num_tokens,
                             output)

    def failed(self, request_id: str, error: BaseException) -> None:
        """An unexpected failure (it becomes INTERNAL): full traceback only with log_prompts."""
        if self.log_prompts:
            self.logger.error("request %s failed", request_id, exc_info=error)
        else:
            self.logger.error("request %s failed: %s", request_id, failure_summary(error))

"""The decode replica's token-message budget (overfill/serving/stream_pacing.py), driven with a hand-held clock."""

from overfill.serving.stream_pacing import StreamPacer


def offer_all(pacer: StreamPacer, tokens: list[int], num_running: int, step_s: float) -> list[list[int]]:
    """The messages a stream gets for one token per step, `step_s` apart; the last token finishes it."""
    messages = []
    for index, token in enumerate(tokens):
        sent = pacer.offer(token, finished=index == len(tokens) - 1, num_running=num_running, now_s=index * step_s)
        if sent is not None:
            messages.append(sent)
    return messages


def test_under_load_tokens_are_held_to_the_budget_and_sent_in_order():
    # 10 streams share 20 messages/s: each may send every 0.5 s; a step every 0.1 s gives it 5 tokens per message.
    messages = offer_all(StreamPacer(messages_per_s=20), list(range(23)), num_running=10, step_s=0.1)
    assert [t for message in messages for t in message] == list(range(23))
    assert messages[0] == [0]                      # the first decoded token is never held
    assert all(len(message) == 5 for message in messages[1:-1])
    assert messages[-1][-1] == 22                  # the last one leaves with its finish at once


def test_a_stream_running_alone_or_without_a_budget_gets_every_token_at_once():
    alone = offer_all(StreamPacer(messages_per_s=1), list(range(6)), num_running=1, step_s=0.01)
    unlimited = offer_all(StreamPacer(messages_per_s=0), list(range(6)), num_running=64, step_s=0.01)
    assert alone == unlimited == [[t] for t in range(6)]


def test_slow_steps_are_not_held():
    # 4 streams, 100 messages/s: an interval of 0.04 s; steps 0.05 s apart are slower than that.
    messages = offer_all(StreamPacer(messages_per_s=100), list(range(5)), num_running=4, step_s=0.05)
    assert messages == [[t] for t in range(5)]

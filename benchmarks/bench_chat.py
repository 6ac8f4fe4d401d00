"""Chat streaming on the embedded SmolLM2-135M-Instruct (CPU): speed against `model.generate`, and Stop.

* tokens/s of `s.chat()`'s token loop (KV cache, one token per step, text decoded as it grows) against
  transformers' `model.generate` on the same greedy 64-token answer: the streaming loop should cost little;
* how many tokens come after Stop: a thread sets the stop event while the answer streams; the issue asks that
  generation stops "within a token or two";
* both answers are checked equal (greedy streaming gives generate's text).

Run: python benchmarks/bench_chat.py   (writes benchmarks/results/chat.md)
"""

from __future__ import annotations

import os
import statistics
import threading
import time

from _machine import machine_lines, write_result

PROMPT = "Write a short story about a lighthouse keeper."
TOKENS = 64
RUNS = 3
STOPS = 5


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nbtune.device import DeviceInfo
    from nbtune.eval.chat import ChatModel, Sampling, run_chat
    from nbtune.eval.generate import generate_texts
    from nbtune.models.default import default_model_folder

    torch.set_num_threads(2)
    folder = default_model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    cpu = DeviceInfo("cpu", "CPU", "fp32", None, None)
    columns = [ChatModel("smollm2", model, tokenizer, True, cpu)]
    sampling = Sampling(max_new_tokens=TOKENS)

    chat_rates, generate_rates = [], []
    for _ in range(RUNS):
        started = time.perf_counter()
        report = run_chat(columns, PROMPT, sampling=sampling)
        answer = report.answers[0]
        chat_rates.append(answer.tokens / (time.perf_counter() - started))
        started = time.perf_counter()
        [generated] = generate_texts(model, tokenizer, [PROMPT], chat=True, max_new_tokens=TOKENS, device=cpu,
                                     modes=("greedy",))
        generate_rates.append(generated.new_tokens / (time.perf_counter() - started))
        assert answer.text == generated.text, (answer.text, generated.text)

    after_stop, latencies = [], []
    for i in range(STOPS):
        stop, seen = threading.Event(), {"tokens": 0, "at_stop": None, "stop_time": None}

        def on_delta(delta, stop=stop, seen=seen):
            seen["tokens"] = delta.tokens

        def press_stop(stop=stop, seen=seen):
            seen["at_stop"], seen["stop_time"] = seen["tokens"], time.perf_counter()
            stop.set()

        timer = threading.Timer(0.5 + 0.2 * i, press_stop)
        timer.start()
        report = run_chat(columns, PROMPT, sampling=Sampling(max_new_tokens=400), on_delta=on_delta, stop=stop)
        latencies.append(time.perf_counter() - seen["stop_time"])
        after_stop.append(report.answers[0].tokens - seen["at_stop"])

    chat_rate, generate_rate = statistics.median(chat_rates), statistics.median(generate_rates)
    lines = ["# Chat streaming (embedded SmolLM2-135M-Instruct, CPU, fp32, greedy)", "", *machine_lines(),
             f"- torch threads: {torch.get_num_threads()}; load average at the end: {os.getloadavg()[0]:.1f} "
             "(a shared machine: speeds are noisy, the ratio and the token counts less so)", "",
             "| what | result |", "| --- | --- |",
             f"| `s.chat()` token loop, {TOKENS}-token answer (median of {RUNS}, wall time incl. prompt) | "
             f"{chat_rate:.1f} tokens/s |",
             f"| `model.generate` through `generate_texts`, same answer | {generate_rate:.1f} tokens/s |",
             f"| streaming loop vs generate | {chat_rate / generate_rate:.2f}x |",
             "| streamed text equals generate's greedy text | yes (asserted in every run) |",
             f"| tokens generated after Stop was pressed ({STOPS} stops) | {after_stop} (max {max(after_stop)}) |",
             f"| time from Stop to the answer's end | max {1000 * max(latencies):.0f} ms, median "
             f"{1000 * statistics.median(latencies):.0f} ms |", "",
             "The issue asks that Stop acts within a token or two: the stop event is read between two tokens, so "
             "at most the token being computed when Stop is pressed is still added."]
    write_result("chat.md", lines)


if __name__ == "__main__":
    main()

"""Worst-case time of one reward call on hostile 10,000-character completions (target: < 1 ms).

python bench/rewards.py            # prints JSON: max and median microseconds per input kind
"""

from __future__ import annotations

import json
import statistics
import time

from r1lite.tasks.rewards import get_reward

N = 10_000
EXAMPLE = {"nums": [44, 19, 35, 2], "target": 98}
CASES = {
    "plain text": "a" * N,
    "many unclosed <answer>": "<answer>" * (N // 8),
    "answer of nested parens": "<answer>" + "(" * 200 + "44+19+35+2" + ")" * 200 + " " * (N - 440) + "</answer>",
    "answer of unary minus": "<answer>" + "-" * (N - 30) + "44+19+35+2</answer>",
    "answer of spaces": "<answer>44" + " " * (N - 40) + "+19+35+2</answer>",
    "many short lines": "<answer>1</answer>\n" * (N // 19),
    "correct, long think": "x" * (N - 60) + "</think>\n<answer>44 + 19 + 35 + 2 - 2</answer>",
}


def main() -> None:
    results = {}
    for reward in ("countdown_tinyzero", "countdown_equation", "think_format"):
        fn = get_reward(reward)
        for name, text in CASES.items():
            times = []
            for _ in range(50):
                t = time.perf_counter()
                fn(text, EXAMPLE)
                times.append((time.perf_counter() - t) * 1e6)
            results[f"{reward} / {name}"] = {
                "max_us": round(max(times), 1),
                "median_us": round(statistics.median(times), 1),
            }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Write Rotten Tomatoes as chat data (issue 21's real run): the embedded task's own train / validation /
test splits (split by movie), each review a conversation in which the user asks for the sentiment and
the assistant answers `positive` or `negative`, saved as a `datasets` folder that `adarank train` reads
with `data.messages_field=messages` (configs/rt-smollm2-chat.yaml).

    python examples/rt_chat.py data/rt-chat
"""

from __future__ import annotations

import argparse
from pathlib import Path

QUESTION = "What is the sentiment of this movie review? Answer with one word, positive or negative.\n\nReview: {}"


def conversations(texts: list[str], labels: list[int], names: list[str]) -> list[list[dict[str, str]]]:
    """One user question and the assistant's one-word answer per review."""
    return [
        [{"role": "user", "content": QUESTION.format(t)}, {"role": "assistant", "content": names[y]}]
        for t, y in zip(texts, labels, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    from datasets import Dataset, DatasetDict

    from adarank.data import LABEL_NAMES, rotten_tomatoes

    names = LABEL_NAMES["rotten_tomatoes"]
    splits = rotten_tomatoes()
    data = DatasetDict({
        split: Dataset.from_dict({"messages": conversations(*splits[split], names)})
        for split in ("train", "validation", "test")
    })  # fmt: skip
    data.save_to_disk(str(args.out))
    print(f"wrote {args.out}: " + ", ".join(f"{s} {len(d):,}" for s, d in data.items()))


if __name__ == "__main__":
    main()

"""Invented facts for the capacity study (issue 39): "Q: Where was <name> born?\\nA: <place>".

Names and places are drawn from random syllables, so no pretrained model can know them: what a run
scores on these facts after training on them is what its adapters stored. The measure is capacity
(exact match and answer-token loss on the trained facts), not generalisation, and the reports say so.

Each draw is fixed by its seed. The study makes every choice (number of facts, learning rate) on one
draw and reports on another, so no reported number was tuned on the facts it is measured on:

    python studies/facts.py --facts 256 --seed 1 --out runs/facts/select   # the draw choices are made on
    python studies/facts.py --facts 256 --seed 0 --out runs/facts/report   # the draw that is reported

The folder is a `save_to_disk` DatasetDict whose train, validation and test splits are the same facts
(`adarank train data.dataset=DIR data.prompt_field=prompt data.response_field=response`), plus
facts.jsonl to read. Every place is distinct, so a fact's answer cannot be guessed from the others.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kl",
    "pr",
    "st",
    "tr",
)
VOWELS = ("a", "e", "i", "o", "u", "ae", "ou")
CODAS = ("", "", "n", "r", "l", "m", "s", "k", "th", "nd")
PROMPT = "Q: Where was {name} born?\nA:"


def syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def word(rng: random.Random, syllables: int) -> str:
    return "".join(syllable(rng) for _ in range(syllables)).capitalize()


def draw(facts: int, seed: int) -> list[dict[str, str]]:
    """``facts`` facts, each with a distinct person (first and last name of 2 syllables each) and a
    distinct place (3 syllables); the same seed gives the same facts."""
    if facts < 1:
        raise ValueError(f"facts must be >= 1, got {facts}")
    rng = random.Random(seed)
    names: set[str] = set()
    places: set[str] = set()
    rows = []
    while len(rows) < facts:
        name = f"{word(rng, 2)} {word(rng, 2)}"
        place = word(rng, 3)
        if name in names or place in places:
            continue
        names.add(name)
        places.add(place)
        rows.append({"prompt": PROMPT.format(name=name), "response": place, "name": name})
    return rows


def write(rows: list[dict[str, str]], out: Path) -> None:
    """The facts as a DatasetDict (train = validation = test) in ``out``, and out/facts.jsonl."""
    from datasets import Dataset, DatasetDict

    columns = {key: [row[key] for row in rows] for key in rows[0]}
    DatasetDict({split: Dataset.from_dict(columns) for split in ("train", "validation", "test")}).save_to_disk(str(out))
    with open(out / "facts.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, required=True, help="number of facts")
    parser.add_argument("--seed", type=int, required=True, help="the draw")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must not hold files)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"--out {args.out} is not empty: give a new folder", file=sys.stderr)
        return 2
    write(draw(args.facts, args.seed), args.out)
    print(f"{args.facts} facts (seed {args.seed}) in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

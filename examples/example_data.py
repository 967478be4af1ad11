"""Write small example files in the layouts users bring, cut from the embedded data packages, for the
README's and docs/data.md's commands: a CSV with text labels and a group column, JSON-lines files of
labelled articles, of question / answer pairs and of chats, and a folder of plain-text documents.

    python examples/example_data.py my-data
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from adarank.io.assets import bbc_news_folder, rotten_tomatoes_file

TOPICS = ("business", "entertainment", "politics", "sports", "tech")


def write_examples(out: Path, reviews: int = 3000, per_topic: int = 100, documents: int = 300) -> list[Path]:
    """Write reviews.csv, chats.jsonl, qa.jsonl, topics.jsonl and articles/*.txt under ``out``; returns
    the paths written. The chats and the question / answer pairs ask for a review's verdict."""
    from datasets import load_dataset

    out.mkdir(parents=True, exist_ok=True)
    rt = load_dataset("csv", data_files=str(rotten_tomatoes_file()), split="train")
    rows = [r for r in rt if r["category"] in ("fresh", "rotten")][:reviews]
    with (out / "reviews.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["snippet", "verdict", "movie"])
        writer.writerows([r["text"], r["category"], r["movie_name"]] for r in rows)
    with (out / "chats.jsonl").open("w") as handle:
        for r in rows:
            messages = [
                {"role": "system", "content": "You judge film reviews. Answer fresh or rotten."},
                {"role": "user", "content": r["text"]},
                {"role": "assistant", "content": r["category"]},
            ]
            handle.write(json.dumps({"messages": messages}) + "\n")
    with (out / "qa.jsonl").open("w") as handle:
        for r in rows:
            question = f"Is this review fresh or rotten? {r['text']}"
            handle.write(json.dumps({"question": question, "answer": r["category"]}) + "\n")
    root = bbc_news_folder()
    with (out / "topics.jsonl").open("w") as handle:
        for topic in TOPICS:
            for file in sorted((root / topic).glob("*.txt"))[:per_topic]:
                body = file.read_bytes().decode("utf-8", errors="replace").strip()
                handle.write(json.dumps({"body": body, "topic": topic}) + "\n")
    articles = out / "articles"
    articles.mkdir(exist_ok=True)
    files = sorted(f for topic in TOPICS for f in (root / topic).glob("*.txt"))[::7][:documents]
    for i, file in enumerate(files):
        (articles / f"{i:04d}.txt").write_bytes(file.read_bytes())
    return [out / name for name in ("reviews.csv", "chats.jsonl", "qa.jsonl", "topics.jsonl")] + [articles]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the example files into")
    for path in write_examples(parser.parse_args().out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

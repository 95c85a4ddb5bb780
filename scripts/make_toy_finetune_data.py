#!/usr/bin/env python3
"""Writes the toy fine-tuning sets under recipes/finetune/data/ (committed;
rerunning gives the same bytes).

topics_{train,eval}.jsonl: classification, three topics, each text 8-24 words
drawn from its topic's own word list, so the label is readable from any word:
a set that a working fine-tuning path must get (nearly) all right.
"""
import json
import random
from pathlib import Path

TOPICS = {
    "animal": ["otter", "zebra", "heron", "walrus", "badger", "lynx", "moose", "gecko"],
    "fruit": ["apple", "mango", "plum", "cherry", "lemon", "papaya", "guava", "kiwi"],
    "tool": ["hammer", "wrench", "chisel", "drill", "saw", "pliers", "rasp", "vise"],
}


def write(path, n, rng):
    labels = sorted(TOPICS)
    with open(path, "w") as f:
        for i in range(n):
            label = labels[i % len(labels)]
            words = [rng.choice(TOPICS[label]) for _ in range(rng.randint(8, 24))]
            f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")


def main():
    out = Path(__file__).resolve().parent.parent / "recipes" / "finetune" / "data"
    out.mkdir(parents=True, exist_ok=True)
    write(out / "topics_train.jsonl", 48, random.Random(1))
    write(out / "topics_eval.jsonl", 24, random.Random(2))


if __name__ == "__main__":
    main()

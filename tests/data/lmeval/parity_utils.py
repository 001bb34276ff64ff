"""Prompt functions for the lm-eval parity task, written from MERA's zero-shot rule, not from rutune's code.

A row either carries a ready `prompt` (few-shot parity: rutune's context, scored by lm-eval) or is a raw
MERA row whose own `instruction` is filled with its `inputs`.
"""


def doc_to_text(doc):
    if doc.get("prompt"):
        return doc["prompt"]
    return doc["instruction"].format(**doc["inputs"])


def doc_to_target(doc):
    return "ABCD".index(doc["outputs"])

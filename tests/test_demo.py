"""The README's main job, ``hf-incr demo --multi_label``, end to end on the embedded data (the real MiniLM, ~40 s)."""

from __future__ import annotations

import warnings

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hf_incr
from hf_incr.demo import COMPARISON_FILENAME, NEW_LABEL, DemoArguments, demo_datasets, run_demo


def test_multi_label_demo_adds_the_label_and_keeps_the_old_ones(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the demo declares its rows fully annotated: nothing to warn
        out = run_demo(DemoArguments(output_dir=str(tmp_path), multi_label=True))
    before, after = out["before"], out["after"]
    # The rows annotate the old labels too, so the increment may refit them: never worse than before.
    assert after["old_micro_f1"] >= before["old_micro_f1"]
    # The kernel LDA head decides each label on the top layers: 0.900 measured (the target); the model's own
    # Linear, which plain transformers loads, reads the pooler the base fine-tune shaped for the old labels (0.727).
    assert after["new_micro_f1"] >= 0.85
    assert after["new_micro_f1"] > out["plain"]["new_micro_f1"] + 0.1
    assert after["new_micro_f1"] > out["classic"]["new_micro_f1"] + 0.5
    assert (tmp_path / COMPARISON_FILENAME).read_bytes()[:4] == b"\x89PNG"
    _, _, _, test = demo_datasets(multi_label=True)
    tokenizer = AutoTokenizer.from_pretrained(out["output_dir"])
    batch = tokenizer([row["text"] for row in test], padding=True, truncation=True, max_length=64, return_tensors="pt")
    carries = torch.tensor([NEW_LABEL in row["labels"] for row in test])
    # Plain transformers loads the model's Linear, with its tuned thresholds folded in (sigmoid > 0.5);
    # hf_incr.load_model attaches the kernel head. Each gives the figure the summary printed for it.
    plain = AutoModelForSequenceClassification.from_pretrained(out["output_dir"]).eval()
    assert NEW_LABEL in plain.config.label2id and plain.config.problem_type == "multi_label_classification"
    for model, metrics in ((plain, out["plain"]), (hf_incr.load_model(out["output_dir"]).eval(), after)):
        with torch.no_grad():
            fired = torch.sigmoid(model(**batch).logits)[:, model.config.label2id[NEW_LABEL]] > 0.5
        f1 = 2 * float((fired & carries).sum()) / float(fired.sum() + carries.sum())
        assert abs(f1 - metrics["new_micro_f1"]) < 1e-6

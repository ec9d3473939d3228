"""What a user sees: the summary's formatting, `hf-incr info` on a folder and through a (fake) Hub, and a quiet run."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from hub_server import FakeHub
from huggingface_hub import constants
from test_hub import TOKEN, _grown_model, _serve, _tokenizer
from text_models import text_dataset, tiny_bert, tokenizer
from transformers.utils import logging as transformers_logging

from hf_incr.cli import main
from hf_incr.heads import ClassStatistics, LinearHead
from hf_incr.hub import push_to_hub
from hf_incr.info import model_info
from hf_incr.replay import ReplayMemory
from hf_incr.report import (
    format_forgetting,
    format_info,
    format_metrics_table,
    format_summary,
    format_timings,
    metric_name,
)
from hf_incr.saving import save_increment
from hf_incr.trainer import clean_metrics

BEFORE = {"old_accuracy": 0.9}
AFTER = {"accuracy": 0.85, "old_accuracy": 0.875, "new_accuracy": 0.5}


# The summary ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("multi_label", "metric"), [(False, "accuracy"), (True, "micro-F1")])
def test_summary_names_the_metric_of_the_model_kind(multi_label, metric):
    assert metric_name(multi_label) == metric
    text = format_summary("increment", {"before": BEFORE, "after": AFTER}, multi_label=multi_label,
                          labels_added=["repair"], forgetting=0.025)
    assert f"| {metric} | old labels | new labels | all labels |" in text
    assert "| before | 90.0 % | - | - |" in text and "| after | 87.5 % | 50.0 % | 85.0 % |" in text
    assert f"Forgetting (drop of old-label {metric}): +2.5 points" in text
    other = metric_name(not multi_label)
    assert other not in text  # "accuracy" never labels a micro-F1 figure, nor the reverse
    assert "Labels added: repair" in text


def test_summary_lists_times_in_phase_order_places_and_the_pipeline_line():
    timings = {"feature_cache_s": 1.25, "warmup_s": 0.5, "finetune_s": 12.0, "total_s": 14.0}
    assert format_timings(timings) == "Time: encoding 1.2 s, warm-up 0.5 s, fine-tuning 12.0 s, total 14.0 s"
    assert format_timings({}) is None and format_forgetting(None) is None
    text = format_summary("train-base", {"after": AFTER}, timings=timings, output_dir="out/m", card="out/m/README.md",
                          lineage="out/m/lineage.json", plot="out/m/increments.png")
    lines = text.splitlines()
    assert lines[0] == "== hf-incr train-base: summary =="
    for line in ("Model:     out/m", "Card:      out/m/README.md", "Lineage:   out/m/lineage.json"):
        assert line in lines
    assert lines[-1] == 'Use it:    pipeline("text-classification", model="out/m")'
    # A model pushed to the Hub is used by its repo id; rows without metrics are left out of the table.
    pushed = format_summary("increment", {"before": {}, "after": AFTER}, output_dir="out/m", model="org/m")
    assert "| before |" not in pushed and pushed.endswith('model="org/m")')


def test_metrics_table_defaults_to_accuracy_and_shows_missing_values_as_a_dash():
    table = format_metrics_table({"model": {"accuracy": float("nan")}})
    assert table.splitlines()[0] == "| accuracy | old labels | new labels | all labels |"
    assert table.splitlines()[2] == "| model | - | - | - |"


def test_clean_metrics_drops_trainer_bookkeeping_and_the_masked_loss():
    raw = {"eval_loss": 1.5, "eval_accuracy": 0.8, "eval_old_accuracy": 0.9, "eval_runtime": 0.2,
           "eval_samples_per_second": 100.0, "eval_steps_per_second": 3.0, "epoch": 2.0,
           "eval_model_preparation_time": 0.001}
    assert clean_metrics(raw) == {"loss": 1.5, "accuracy": 0.8, "old_accuracy": 0.9}
    assert clean_metrics(raw, only_old=True) == {"accuracy": 0.8, "old_accuracy": 0.9}


# hf-incr info -------------------------------------------------------------------------------------------------------


def _saved_folder(tmp_path, *, statistics: bool):
    model = _grown_model()  # labels alpha, beta (base) + gamma (increment 1)
    replay = ReplayMemory([{"text": "w5 w6", "labels": ["alpha"]}, {"text": "w7 w8", "labels": ["gamma"]}])
    heads = None
    if statistics:
        linear = model.classifier
        rows = ClassStatistics(linear.in_features).grow(linear.out_features)
        heads = {"linear": LinearHead(rows.update(torch.randn(4, linear.in_features), torch.tensor([0, 1, 2, 0])))}
    return save_increment(model, tmp_path / "grown", _tokenizer(tmp_path / "tok"), replay=replay, heads=heads)


def test_info_of_a_local_folder(tmp_path, capsys):
    folder = _saved_folder(tmp_path, statistics=True)
    info = model_info(str(folder))
    assert info["labels"] == [(0, "alpha", 0), (1, "beta", 0), (2, "gamma", 1)]
    assert info["heads"] == {"linear": "yes", "kernel": None, "beside_kept": None}
    assert info["replay"] and not info["multi_label"]
    assert info["card"] == f"{folder}/README.md" and info["plot"] == f"{folder}/increments.png"
    assert main(["info", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "gamma  (1)" in text and "| 1 | increment | gamma | 3 | 80.0 % | 85.0 % | 70.0 % | +5.0 pp |" in text
    assert "Last metrics: accuracy 0.8, old_accuracy 0.85, new_accuracy 0.7" in text
    # The next increment solves the Linear from the saved statistics (the exact path).
    assert "Linear's closed form (its statistics): yes" in text and "replay memory: yes" in text
    assert "Next increment: one frozen pass over the rows (the output Linear's inputs), then Linear's closed form " \
           "solved from the statistics saved with the model" in text
    assert f"Plot: {folder}/increments.png" in text


def test_info_says_what_a_model_without_statistics_will_do(tmp_path):
    info = model_info(str(_saved_folder(tmp_path, statistics=False)))
    assert info["heads"]["linear"] == "no"
    # The path for a model trained elsewhere: its trained rows kept, the new ones fitted beside them.
    assert info["next_increment"].startswith("every trained row of the Linear kept bit for bit")
    assert f"Next increment: {info['next_increment']}." in format_info(info)


def test_info_of_a_plain_folder_and_of_nothing(tmp_path, capsys):
    plain = tmp_path / "plain"
    tiny_bert(["a", "b"]).save_pretrained(plain)
    info = model_info(str(plain))
    assert info["lineage"] == [] and info["labels"] == [(0, "a", None), (1, "b", None)]
    assert "Lineage: none" in format_info(info)
    assert main(["info", str(tmp_path / "missing")]) == 1
    assert "hf-incr info: error" in capsys.readouterr().err


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    server = _serve(FakeHub(token=TOKEN, lifetime=60), monkeypatch, tmp_path)
    yield server
    server.stop()


def test_info_through_the_hub_reads_config_and_file_list_only(hub, tmp_path, monkeypatch):
    folder = _saved_folder(tmp_path, statistics=True)
    push_to_hub(folder, "test-user/tiny-grown", token=TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    before = len(hub.routes_called())
    info = model_info("test-user/tiny-grown", token=TOKEN)
    assert [name for _, name, _ in info["labels"]] == ["alpha", "beta", "gamma"]
    assert info["heads"]["linear"] == "yes" and info["replay"] and len(info["lineage"]) == 2
    assert info["plot"].endswith("/test-user/tiny-grown/blob/main/increments.png")
    downloads = [r for r in hub.routes_called()[before:] if "/resolve/" in r]
    assert downloads and all(r.endswith("/config.json") for r in downloads)  # never the weights


# A quiet run --------------------------------------------------------------------------------------------------------

# The gradient warm-up (a Trainer phase, whose logs the quiet default hides).
FLAGS = ["--head", "trained", "--warmup_epochs", "2", "--finetune_layers", "0",
         "--distill_weight", "0", "--use_cpu",
         "--report_to", "none", "--save_strategy", "no", "--per_device_train_batch_size", "4", "--seed", "0",
         "--logging_steps", "1"]


@pytest.fixture()
def increment_inputs(tmp_path):
    base = tmp_path / "base"
    tiny_bert(["refund", "delivery", "login"], dropout=0.0).save_pretrained(base)
    tokenizer().save_pretrained(base)
    train, test = tmp_path / "new.jsonl", tmp_path / "test.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in text_dataset(["repair"], 8).to_list()))
    rows = text_dataset(["refund", "delivery", "login", "repair"], 2, 30).to_list()
    test.write_text("\n".join(json.dumps(r) for r in rows))
    return ["--model_name_or_path", str(base), "--train_file", str(train), "--eval_file", str(test)]


def test_a_default_run_is_quiet_and_ends_with_the_summary(tmp_path, increment_inputs, capfd):
    bars = (datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    verbosity = transformers_logging.get_verbosity()
    out_dir = tmp_path / "quiet"
    assert main(["increment", *increment_inputs, "--output_dir", str(out_dir), *FLAGS]) == 0
    out, err = capfd.readouterr()
    shown = out + err
    assert "'loss':" not in shown and "{'train_runtime'" not in shown and "'grad_norm'" not in shown
    assert "pin_memory" not in shown and "Map" not in shown and "Generating train split" not in shown
    assert "» Warm-up:" in err and "warm-up: 100%" in err  # one heading and one bar per phase
    assert "== hf-incr increment: summary ==" in out and "Forgetting (drop of old-label accuracy)" in out
    assert f'pipeline("text-classification", model="{out_dir}")' in out
    # The run's settings are restored afterwards.
    assert (datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()) == bars
    assert transformers_logging.get_verbosity() == verbosity
    # Lineage (and so the card) keeps only what a reader needs.
    [record] = json.loads((out_dir / "lineage.json").read_text())
    metrics = record["metrics"]
    assert "loss" not in metrics["before"] and "old_accuracy" in metrics["before"]
    for name in ("runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time"):
        assert name not in metrics["after"] and name not in metrics["before"]
    assert metrics["eval_examples"] == 8 and metrics["seconds"] >= 0


def test_verbose_brings_trainers_logs_back(tmp_path, increment_inputs, capfd):
    verbosity = transformers_logging.get_verbosity()
    assert main(["increment", *increment_inputs, "--output_dir", str(tmp_path / "loud"), *FLAGS, "--verbose"]) == 0
    out, err = capfd.readouterr()
    assert "'loss':" in out + err
    assert transformers_logging.get_verbosity() == verbosity


def test_demo_comparison_chart_is_written(tmp_path):
    from hf_incr.demo import CLASSIC, HF_INCR, plot_comparison

    rows = {CLASSIC: {"old_accuracy": 0.2, "new_accuracy": 1.0, "accuracy": 0.3}, HF_INCR: AFTER}
    path = plot_comparison(rows, str(tmp_path / "out" / "comparison.png"), metric="micro-F1")
    assert (tmp_path / "out" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.endswith(".png")


def test_summary_names_the_tuned_thresholds_as_probabilities():
    from hf_incr.report import format_summary

    text = format_summary("increment", {}, multi_label=True, thresholds={"complaint": 0.0, "praise": -2.0})
    assert "Thresholds tuned (probability, folded into the biases): complaint 0.500, praise 0.119" in text
    many = format_summary("increment", {}, thresholds={f"l{i}": 0.0 for i in range(8)})
    assert "and 3 more (lineage.json)" in many
    # A closed-form head's logits can be in the hundreds: a far threshold must not read as "0.000" (always predicted).
    far = format_summary("increment", {}, multi_label=True, thresholds={"low": -50.0, "high": 50.0})
    assert "low 1.9e-22, high > 0.999" in far


def test_the_summary_says_whether_the_encoder_was_adapted_and_what_decided_it():
    from hf_incr.report import format_summary

    unchecked = format_summary("increment", {}, adaptation={"epochs": 1.0, "kept": False})
    assert "Encoder adapted" in unchecked and "fine-tuned 1 epoch(s)" in unchecked
    assert "not checked: pass eval data" in unchecked
    undone = {"epochs": 1.0, "kept": True, "eval_kept_rows": {"old_accuracy": 0.9, "accuracy": 0.8},
              "eval_adapted": {"old_accuracy": 0.85, "accuracy": 0.81}}
    line = format_summary("increment", {}, adaptation=undone)
    assert "Encoder not adapted" in line and "kept rows 90.0 / 80.0 %, adapted 85.0 / 81.0 %" in line
    assert "adapted" not in format_summary("increment", {})

"""The model card: rendered through huggingface_hub's ModelCard, with lineage, metrics, model-index and the plot.

``model_cards/example_README.md`` (and its plot) is a golden file rendered from ``example_config()``; regenerate it
with ``HF_INCR_UPDATE_GOLDEN=1 pytest tests/test_model_card.py``.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import matplotlib
import pytest
import yaml
from huggingface_hub import ModelCard
from tiny_models import tiny_model
from transformers import BertConfig

from hf_incr.config import IncrementConfig
from hf_incr.lineage import LINEAGE_ATTRIBUTE, get_lineage
from hf_incr.model_card import (
    PLOT_FILENAME,
    card_has_lineage,
    eval_results,
    plot_increments,
    render_model_card,
    template_path,
    write_model_card,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CARD = ROOT / "model_cards" / "example_README.md"
EXAMPLE_PLOT = "example_increments.png"
FIXED_VERSIONS = {"Python": "3.11", "hf_incr": "0.1.0", "Transformers": "5.23.0", "PyTorch": "2.13.0"}


# The recipe settings as of hf_incr 0.1.0, frozen so the golden card does not change whenever IncrementConfig gains a
# field (test_card_recipe_table_has_every_setting_per_increment checks the current fields).
EXAMPLE_RECIPE = {
    "text_column": "text", "label_column": "label", "new_labels": None, "multi_label": False, "max_length": 128,
    "init": "imprint", "warmup_epochs": 30.0, "warmup_learning_rate": 0.01, "warmup_scope": "output",
    "cache_features": True, "feature_batch_size": 64, "finetune_layers": 0, "finetune_epochs": 3.0,
    "finetune_learning_rate": 5e-05, "layer_lr_decay": 0.8, "replay_per_label": 0, "replay_selection": "herding",
    "distill_weight": 0.0, "distill_temperature": 2.0, "weight_align": False, "closed_form_head": False,
    "ridge_lambda": 1.0, "threshold": 0.5,
}


def _record(k, kind, added, ids, num_labels, base, after, before=None, forgetting=None, train=0, replayed=0, **recipe):
    return {
        "increment": k,
        "kind": kind,
        "labels_added": added,
        "label_ids": ids,
        "num_labels": num_labels,
        "base_model": base,
        "recipe": {**EXAMPLE_RECIPE, **recipe},
        "metrics": {"before": before or {}, "after": after, "forgetting": forgetting, "train_examples": train,
                    "replayed_examples": replayed},
        "data_fingerprint": f"fp{k}",
        "date": f"2026-11-{20 + k:02d}T10:00:00+00:00",
    }


def example_config() -> BertConfig:
    """A realistic three-step lineage: bike-shop support intents on all-MiniLM-L6-v2 (numbers as a run produces)."""
    labels = ["order_status", "refund_request", "product_question", "payment_problem", "account_access",
              "repair_booking", "delivery_address_change", "complaint"]
    lineage = [
        _record(0, "base", labels[:3], [0, 1, 2], 3, "sentence-transformers/all-MiniLM-L6-v2",
                {"accuracy": 0.9583, "macro_f1": 0.9571, "new_accuracy": 0.9583, "old_accuracy": None}, train=143,
                finetune_layers=2, replay_per_label=20),
        _record(1, "increment", labels[3:5], [3, 4], 5, "/home/alice/bike-intents/step0",
                {"accuracy": 0.9125, "macro_f1": 0.9087, "old_accuracy": 0.9306, "new_accuracy": 0.8846},
                before={"old_accuracy": 0.9583}, forgetting=0.0277, train=92, replayed=60,
                finetune_layers=2, replay_per_label=20, distill_weight=1.0),
        _record(2, "increment", labels[5:], [5, 6, 7], 8, "/home/alice/bike-intents/step1",
                {"accuracy": 0.8643, "macro_f1": 0.8591, "old_accuracy": 0.8875, "new_accuracy": 0.8333},
                before={"old_accuracy": 0.9125}, forgetting=0.025, train=145, replayed=100,
                finetune_layers=2, replay_per_label=20, distill_weight=1.0, weight_align=True),
    ]
    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                        architectures=["BertForSequenceClassification"])
    setattr(config, LINEAGE_ATTRIBUTE, lineage)
    return config


EXAMPLES = {
    "order_status": ["where is my order #48213", "Has my bike shipped yet? Ordered it last Monday."],
    "refund_request": ["The saddle doesn't fit, I'd like my money back please."],
    "product_question": ["Does the kids' bike come with stabilisers?"],
    "payment_problem": ["I was charged twice for the helmet, please fix this"],
    "account_access": ["Can my partner and I share one account?"],
    "repair_booking": ["Can I bring my e-bike in for a service on Saturday?"],
    "delivery_address_change": ["Hi, we're on holiday when it arrives, can it go to my neighbour at number 9?"],
    "complaint": ["Third time the courier left the box in the rain. Not happy | at all."],
}


def _render_example(directory: Path) -> str:
    card = render_model_card(example_config(), model_id="bike-shop/minilm-support-intents", plot_filename=EXAMPLE_PLOT,
                             examples=EXAMPLES, versions=FIXED_VERSIONS, license="apache-2.0", language="en")
    plot_increments(get_lineage(example_config()), directory / EXAMPLE_PLOT)
    return str(card)


def _body_table(text: str, header_start: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with ``header_start`` (cells stripped)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_template_ships_in_the_package():
    assert template_path().is_file()
    assert template_path().parent.name == "model_cards"
    assert (template_path().parent / "__init__.py").is_file()


def test_card_lists_labels_with_their_increment_and_lineage(tmp_path):
    text = _render_example(tmp_path)
    labels = _body_table(text, "| Id | Label |")
    assert [row[1] for row in labels] == [f"`{n}`" for n in example_config().id2label.values()]
    assert [row[2] for row in labels] == ["0 (base)"] * 3 + ["1"] * 2 + ["2"] * 3
    assert "Third time the courier left the box in the rain. Not happy \\| at all." in labels[7][3]
    lineage = _body_table(text, "| Increment | Kind |")
    assert [row[0] for row in lineage] == ["0", "1", "2"]
    assert lineage[1][2] == "`payment_problem`, `account_access`"
    # A Hub base model is linked; a local folder shows its name only (no user's directory layout).
    assert lineage[0][4] == "[sentence-transformers/all-MiniLM-L6-v2](https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2)"
    assert lineage[2][4] == "`step1` (local folder)" and "/home/alice" not in text
    assert card_has_lineage(text, example_config())
    assert not card_has_lineage(text.replace("increments=3", "increments=2"), example_config())


def test_card_metrics_table_and_model_index(tmp_path):
    text = _render_example(tmp_path)
    metrics = _body_table(text, "| Increment | Labels added | All labels |")
    assert metrics[0][2:] == ["95.8", "—", "—", "95.8", "—", "95.7"]
    assert metrics[2][2:] == ["86.4", "91.2", "88.8", "83.3", "+2.5", "85.9"]
    card = ModelCard(text)
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"hf_incr", "class-incremental"} <= set(data.tags)
    found = {(r.dataset_config, r.metric_name): r.metric_value for r in data.eval_results}
    assert found[("increment-2", "Accuracy (old labels)")] == 0.8875
    assert found[("increment-1", "Forgetting (accuracy on old labels, before - after)")] == 0.0277
    assert ("increment-0", "Accuracy (old labels)") not in found  # no old labels at the base: no entry
    assert len(data.eval_results) == len(eval_results(example_config())) == 3 + 5 + 5  # base: all, new, macro-F1
    assert yaml.safe_load(text.split("---")[1])["model-index"][0]["name"] == "minilm-support-intents"


def test_card_recipe_table_has_every_setting_per_increment():
    config = example_config()
    lineage = getattr(config, LINEAGE_ATTRIBUTE)
    for record in lineage:
        record["recipe"] = IncrementConfig(**{k: v for k, v in record["recipe"].items()
                                              if k in IncrementConfig().to_dict()}).to_dict()
    setattr(config, LINEAGE_ATTRIBUTE, lineage)
    rows = _body_table(str(render_model_card(config, model_id="me/m", versions={})), "| Setting |")
    by_name = {row[0].strip("`"): row[1:] for row in rows}
    assert set(by_name) == set(IncrementConfig().to_dict())
    assert by_name["distill_weight"] == ["0.0", "1.0", "1.0"]
    assert by_name["weight_align"] == ["False", "False", "True"]


def test_loading_snippet_runs(tmp_path):
    """The card's transformers code block loads the saved model and classifies, with the card's model id."""
    model = tiny_model()
    from transformers import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]))
    BertTokenizer.from_pretrained(tmp_path).save_pretrained(tmp_path / "model")
    model.save_pretrained(tmp_path / "model")
    card = write_model_card(model, tmp_path / "model", model_id=str(tmp_path / "model"))
    code = re.search(r"```python\n(.*?)```", card.read_text(), re.S).group(1)
    ast.parse(code)
    namespace: dict = {}
    exec(compile(code, "card", "exec"), namespace)
    assert namespace["classifier"]("w1 w2")[0]["label"] in {"alpha", "beta", "gamma"}


def test_plain_model_without_lineage_gets_a_card_and_no_plot(tmp_path):
    path = write_model_card(tiny_model(), tmp_path)
    text = path.read_text()
    assert "No increments recorded." in text and "No evaluation was recorded" in text
    assert "<!-- hf_incr:lineage increments=0 -->" in text
    assert not (tmp_path / PLOT_FILENAME).exists()
    assert "model-index" not in text
    assert [row[2] for row in _body_table(text, "| Id | Label |")] == ["before hf_incr"] * 3


def test_plot_is_a_png_linked_from_the_card_and_leaves_global_style_alone(tmp_path):
    model = tiny_model(labels=list(example_config().id2label.values()))
    setattr(model.config, LINEAGE_ATTRIBUTE, getattr(example_config(), LINEAGE_ATTRIBUTE))
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    path = write_model_card(model, tmp_path)
    assert (tmp_path / PLOT_FILENAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({PLOT_FILENAME})" in path.read_text()
    assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend
    # Deterministic: a re-save writes identical bytes (a retried push does not change the files).
    first = (tmp_path / PLOT_FILENAME).read_bytes(), path.read_text()
    write_model_card(model, tmp_path)
    assert ((tmp_path / PLOT_FILENAME).read_bytes(), path.read_text()) == first


def test_multi_label_card_names_micro_f1_and_sigmoid(tmp_path):
    model = tiny_model(problem_type="multi_label_classification")
    setattr(model.config, LINEAGE_ATTRIBUTE, [_record(0, "base", ["alpha", "beta", "gamma"], [0, 1, 2], 3, "x/y",
                                                      {"accuracy": 0.8, "new_accuracy": 0.8, "micro_f1": 0.8})])
    text = write_model_card(model, tmp_path, model_id="me/tags").read_text()
    assert 'function_to_apply="sigmoid"' in text and "Micro-F1 (%)" in text
    assert {r.metric_type for r in ModelCard(text).data.eval_results} == {"f1"}


def test_save_increment_writes_the_card_with_the_final_folder_name(tmp_path):
    from hf_incr.saving import save_increment

    model = tiny_model()
    setattr(model.config, LINEAGE_ATTRIBUTE, getattr(example_config(), LINEAGE_ATTRIBUTE)[:1])
    out = save_increment(model, tmp_path / "grown")
    text = (out / "README.md").read_text()
    assert f'model_id = "{tmp_path / "grown"}"' in text and ".tmp-" not in text
    assert (out / PLOT_FILENAME).is_file()


def test_example_card_is_up_to_date(tmp_path):
    """Golden file: the committed example card is what the template renders today."""
    text = _render_example(tmp_path)
    if os.environ.get("HF_INCR_UPDATE_GOLDEN"):
        EXAMPLE_CARD.write_text(text, encoding="utf-8")
        (EXAMPLE_CARD.parent / EXAMPLE_PLOT).write_bytes((tmp_path / EXAMPLE_PLOT).read_bytes())
    if not EXAMPLE_CARD.exists():
        pytest.fail(f"{EXAMPLE_CARD} is missing; run with HF_INCR_UPDATE_GOLDEN=1 to write it.")
    assert text == EXAMPLE_CARD.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------
# Large label spaces and long lineages: the card stays readable and its size bounded.


def _config_with_labels(num_labels: int, added_last: int, **extra) -> BertConfig:
    """A config whose first labels predate hf_incr and whose last ``added_last`` were added by increment 0."""
    labels = [f"intent_{i:05d}" for i in range(num_labels)]
    config = BertConfig(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                        architectures=["BertForSequenceClassification"], **extra)
    added = labels[-added_last:]
    setattr(config, LINEAGE_ATTRIBUTE, [_record(0, "increment", added,
                                                list(range(num_labels - added_last, num_labels)),
                                                num_labels, "org/base", {"accuracy": 0.5, "old_accuracy": 0.5,
                                                                         "new_accuracy": 0.5})])
    return config


def test_card_groups_labels_past_the_table_limit_and_its_size_does_not_grow_with_them():
    sizes = {}
    for count in (101, 1050, 20_000):
        text = str(render_model_card(_config_with_labels(count, 50), model_id="me/m", versions={}))
        sizes[count] = len(text.encode())
        groups = _body_table(text, "| Ids | Labels |")
        assert [row[0] for row in groups] == [f"0–{count - 51}", f"{count - 50}–{count - 1}"]
        assert [row[2] for row in groups] == [str(count - 50), "50"]
        assert [row[3] for row in groups] == ["before hf_incr", "0"]
        assert groups[0][1].startswith("`intent_00000`, `intent_00001`,") and groups[0][1].endswith(
            f"… and {count - 60} more"
        )
        # The lineage table names the 50 labels added by their first 10.
        assert _body_table(text, "| Increment | Kind |")[0][2].endswith("… and 40 more")
    assert max(sizes.values()) - min(sizes.values()) < 100, sizes
    assert sizes[20_000] < 8_000


def test_card_lists_every_label_up_to_the_table_limit():
    text = str(render_model_card(_config_with_labels(100, 50), model_id="me/m", versions={}))
    rows = _body_table(text, "| Id | Label |")
    assert [row[0] for row in rows] == [str(i) for i in range(100)]
    assert "| Ids | Labels |" not in text


def _long_lineage(count: int = 21) -> BertConfig:
    labels = [f"l{i:02d}" for i in range(2 * count)]
    lineage = [
        _record(k, "base" if k == 0 else "increment", labels[2 * k: 2 * k + 2], [2 * k, 2 * k + 1], 2 * k + 2,
                "org/base" if k == 0 else f"./step{k - 1}",
                {"accuracy": 0.9 - k / 100, "old_accuracy": None if k == 0 else 0.9, "new_accuracy": 0.8},
                before=None if k == 0 else {"old_accuracy": 0.91}, forgetting=None if k == 0 else 0.01)
        for k in range(count)
    ]
    lineage[0]["recipe"]["warmup_epochs"] = 5.0  # the base's recipe differs from the increments'
    config = BertConfig(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                        architectures=["BertForSequenceClassification"])
    setattr(config, LINEAGE_ATTRIBUTE, lineage)
    return config


def test_long_lineage_card_summarises_and_groups_but_tabulates_every_increment(tmp_path):
    config = _long_lineage(21)
    text = str(render_model_card(config, model_id="me/m", versions={}))
    assert "grown class by class with hf_incr from [org/base](https://huggingface.co/org/base): a base classifier " \
           "with 2 labels, then 20 increments added 40 labels." in text
    assert [row[0] for row in _body_table(text, "| Increment | Kind |")] == [str(k) for k in range(21)]
    assert [row[0] for row in _body_table(text, "| Increment | Labels added | All labels |")] == [
        str(k) for k in range(21)
    ]
    assert card_has_lineage(text, config)
    # One recipe column per run of identical recipes.
    assert "| Setting | Increment 0 | Increments 1–20 |" in text
    assert _body_table(text, "| Setting |")[0] == ["`text_column`", "text", "text"]
    # The metadata keeps the latest 10 increments (4 metrics each: all, old, new, forgetting); the body says so.
    configs = [r.dataset_config for r in ModelCard(text).data.eval_results]
    assert sorted(set(configs)) == sorted(f"increment-{k}" for k in range(11, 21)) and len(configs) == 40
    assert "for the latest 10 (`lineage.json` has every one)" in text
    assert len(eval_results(config, last=None)) == 2 + 20 * 4


def test_long_lineage_plot_thins_its_ticks_and_renders(tmp_path):
    import itertools

    from hf_incr.model_card import _tick_labels

    lineage = get_lineage(_long_lineage(21))
    ticks = _tick_labels(lineage)
    shown = [i for i, tick in enumerate(ticks) if tick]
    assert len(ticks) == 21 and shown[0] == 0 and shown[-1] == 20 and len(shown) <= 9
    assert min(b - a for a, b in itertools.pairwise(shown)) >= 2  # never two neighbours labelled
    assert ticks[20] == "20\n(42)"
    # Short lineages keep the full three-line ticks.
    assert _tick_labels(lineage[:3]) == ["0\nbase\n(2 total)", "1\n+2 labels\n(4 total)", "2\n+2 labels\n(6 total)"]
    path = plot_increments(lineage, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_card_of_a_base_built_from_a_config_does_not_name_its_own_folder_as_base(tmp_path):
    model = tiny_model()
    setattr(model.config, LINEAGE_ATTRIBUTE, [_record(0, "base", ["alpha", "beta", "gamma"], [0, 1, 2], 3, None,
                                                      {"accuracy": 0.8, "new_accuracy": 0.8})])
    model.save_pretrained(tmp_path / "saved")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path / "saved")  # _name_or_path is now the folder itself
    text = write_model_card(config, tmp_path / "saved").read_text()
    assert "- **Base model:** unknown" in text and "`saved` (local folder)" not in text

"""A head registered from outside hf_incr takes part in everything a built-in head does, with no other module
touched: an increment fits it from the frozen pass, a save writes its file, ``hf_incr.load_model`` attaches it, the
next increment continues its statistics, ``hf-incr info`` and the Hub's mirroring know its file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from text_models import text_dataset, tiny_bert, tokenizer, training_args

import hf_incr
from hf_incr import IncrementConfig, train_increment
from hf_incr.heads import HEADS, ClassStatistics, Head, register_head
from hf_incr.heads.files import FileReader, write_tensors
from hf_incr.hub import mirrored_patterns
from hf_incr.info import model_info
from hf_incr.report import format_info

OLD = ["refund", "delivery", "login"]
TOY_FILE = "toy_nearest_mean.safetensors"


class NearestMeanHead(Head):
    """The nearest class mean of the Linear's inputs: logits are minus the distances to the labels' means."""

    name = "toy"
    title = "nearest-mean head"
    files = (TOY_FILE,)
    lineage_key = "toy"

    def __init__(self, statistics: ClassStatistics):
        self.statistics, self.share, self.rows = statistics, None, None

    @property
    def means(self) -> torch.Tensor:
        return (self.statistics.sums / self.statistics.counts.clamp_min(1)[:, None]).float()

    @classmethod
    def start(cls, model, location, *, config, multi_label, seed, kept_labels):
        return cls(ClassStatistics(location.linear.in_features))

    def begin(self, rows) -> None:
        self.rows = rows
        self.statistics.grow(rows.num_labels)
        self.share = self.statistics.empty_copy()

    def add(self, rows, features, targets) -> None:
        self.share.update(features, targets)

    def end(self) -> None:
        self.statistics.merge(self.share.sum_over_processes())

    def solve(self, model, location):
        self.attach(model, location)
        return {}

    def logits(self, features, linear_logits):
        return -torch.cdist(features.float(), self.means.to(features.device))

    def save(self, folder, *, statistics=True):
        tensors = {"means": self.means, **self.statistics.to_tensors()}
        return [write_tensors(Path(folder) / TOY_FILE, tensors, format="toy", version="1",
                              metadata={"dim": self.statistics.dim})]

    @classmethod
    def load(cls, folder, *, multi_label=False):
        path = Path(folder) / TOY_FILE
        if not path.is_file():
            return None
        reader = FileReader(path, "the toy head is lost", "Restore it.")
        tensors, metadata = reader.read(("toy",))
        return cls(ClassStatistics.from_tensors(tensors, int(reader.json(metadata, "dim")), False))

    load_inference = load

    def lineage_entry(self, id2label):
        return {"labels": self.statistics.num_labels}


@pytest.fixture
def toy_head():
    register_head(NearestMeanHead)
    yield NearestMeanHead
    HEADS.pop(NearestMeanHead.name)


def test_a_registered_head_is_fitted_saved_loaded_continued_and_described(toy_head, tmp_path):
    tok = tokenizer()
    config = IncrementConfig(head="toy", finetune_layers=0)
    model = tiny_bert(OLD, seed=1, dropout=0.0)
    base = train_increment(model, tok, text_dataset(OLD, 6), config=config, kind="base",
                           args=training_args(tmp_path, output_dir=str(tmp_path / "base")))
    assert set(base.heads) == {"linear", "toy"} and base.plan.answering == "toy"
    assert base.record["toy"] == {"labels": 3}
    assert (tmp_path / "base" / TOY_FILE).is_file()

    # load_model attaches it: the model's logits are the head's.
    loaded = hf_incr.load_model(str(tmp_path / "base"))
    texts = list(text_dataset(OLD, 2, offset=50)["text"])
    batch = tok(texts, padding=True, return_tensors="pt")
    features = hf_incr.encode_for_heads(loaded, tok, texts, {"toy": base.heads["toy"]}, show_progress=False)["toy"]
    with torch.no_grad():
        logits = loaded(**batch).logits
    torch.testing.assert_close(logits, -torch.cdist(features, base.heads["toy"].means))

    # The next increment continues its statistics from the folder: the rows of both increments, once each.
    grown = train_increment(loaded, tok, text_dataset(["repair"], 4), config=config,
                            args=training_args(tmp_path, output_dir=str(tmp_path / "v2")))
    assert grown.plan.starts == () and grown.heads["toy"].statistics.counts.tolist() == [6.0, 6.0, 6.0, 4.0]
    info = model_info(str(tmp_path / "v2"))
    assert info["heads"]["toy"] == "yes, with its statistics"
    assert "nearest-mean head: yes" in format_info(info) and "answers with the nearest-mean head" in format_info(info)
    assert TOY_FILE in mirrored_patterns()

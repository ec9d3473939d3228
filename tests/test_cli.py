"""The `hf-incr` command and the scripts: flags and config files, the same result as the Python API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from text_models import text_dataset, tiny_bert, tokenizer

from hf_incr import ConfigError
from hf_incr.cli import main, parse_args

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--warmup_epochs", "2", "--finetune_layers", "0", "--distill_weight", "0", "--use_cpu",
         "--report_to", "none", "--save_strategy", "no",
         "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--seed", "0"]


@pytest.fixture()
def base_dir(tmp_path):
    folder = tmp_path / "base"
    tiny_bert(["refund", "delivery", "login"], dropout=0.0).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture()
def data_files(tmp_path):
    train, test = tmp_path / "new.jsonl", tmp_path / "test.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in text_dataset(["repair"], 8).to_list()))
    test.write_text(
        "\n".join(json.dumps(r) for r in text_dataset(["refund", "delivery", "login", "repair"], 2, 30).to_list())
    )
    return train, test


def test_help_lists_every_recipe_field(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--replay_per_label", "--layer_lr_decay", "--head", "--kernel_features", "--train_file",
                 "--per_device_train_batch_size"):
        assert flag in text
    assert "Examples stored per label" in text  # the dataclass help, not just the name


def test_config_file_sets_defaults_flags_override_and_save_config_round_trips(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"replay_per_label": 7, "warmup_epochs": 3, "train_file": "x.jsonl",
                                      "output_dir": str(tmp_path / "o")}))
    saved = tmp_path / "saved.yaml"
    script, recipe, _training = parse_args(["--config", str(config), "--warmup_epochs", "5",
                                            "--save_config", str(saved), "--hub_token", "hf_secret_value"])
    assert recipe.replay_per_label == 7 and recipe.warmup_epochs == 5 and script.train_file == "x.jsonl"
    text = saved.read_text()
    assert "hf_secret_value" not in text
    _, recipe2, training2 = parse_args(["--config", str(saved)])
    assert recipe2.replay_per_label == 7 and recipe2.warmup_epochs == 5 and training2.output_dir == str(tmp_path / "o")


def test_config_file_with_unknown_keys_is_refused(tmp_path, base_dir, data_files, capsys, monkeypatch):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"replay_per_lable": 7}))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['replay_per_lable'\]"):
        parse_args(["--config", str(config)])
    # Through the command: nothing ran (no model loaded, no data read) and nothing was written.
    import hf_incr.cli
    import hf_incr.loading

    ran = []
    for module, name in ((hf_incr.cli, "run_increment"), (hf_incr.cli, "load_data"), (hf_incr.loading,
                         "load_classifier"), (hf_incr.cli, "save_config")):
        monkeypatch.setattr(module, name, lambda *a, __name=name, **k: ran.append(__name))
    monkeypatch.setitem(hf_incr.cli.COMMANDS, "increment", lambda *a: ran.append("increment"))
    train, test = data_files
    before = {p: p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))}
    code = main(["increment", "--config", str(config), "--model_name_or_path", str(base_dir), "--train_file",
                 str(train), "--eval_file", str(test), "--output_dir", str(tmp_path / "out"), "--save_config",
                 str(tmp_path / "saved.yaml"), *FLAGS])
    assert code == 1
    error = capsys.readouterr().err
    assert "unknown setting(s) ['replay_per_lable']" in error and "Check the spelling" in error
    assert "nothing was run" in error
    assert ran == []
    assert {p: p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))} == before


def test_removed_settings_are_refused_naming_what_replaced_them(tmp_path, base_dir, data_files, capsys,
                                                               monkeypatch):
    """Settings of earlier versions, in a --config file or as flags: refused before anything runs, each named with what
    replaced it (hf_incr.config.REMOVED)."""
    import hf_incr.cli
    import hf_incr.loading
    from hf_incr.config import REMOVED

    assert {"closed_form_head", "random_features", "init", "feature_batch_size"} <= set(REMOVED)
    ran = []
    for module, name in ((hf_incr.cli, "run_increment"), (hf_incr.cli, "load_data"), (hf_incr.loading,
                         "load_classifier"), (hf_incr.cli, "save_config")):
        monkeypatch.setattr(module, name, lambda *a, __name=name, **k: ran.append(__name))
    monkeypatch.setitem(hf_incr.cli.COMMANDS, "increment", lambda *a: ran.append("increment"))
    train, test = data_files
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump({"closed_form_head": False, "random_features": 100, "warmup_epochs": 3}))
    with pytest.raises(ConfigError, match=r"\['closed_form_head', 'random_features'\], removed from hf_incr"):
        parse_args(["--config", str(config)])
    before = {p: p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))}
    common = ["--model_name_or_path", str(base_dir), "--train_file", str(train), "--eval_file", str(test),
              "--output_dir", str(tmp_path / "out"), "--save_config", str(tmp_path / "saved.yaml"), *FLAGS]
    code = main(["increment", "--config", str(config), *common])
    assert code == 1
    error = capsys.readouterr().err
    assert str(config) in error and "`closed_form_head` -> `head`" in error and "`head: trained`" in error
    assert "`random_features` -> `head: kernel`" in error and "nothing was run" in error
    for flags, named in ((["--closed_form_head", "false"], "`closed_form_head` -> `head`"),
                         (["--random_features=100"], "`random_features` -> `head: kernel`"),
                         (["--init", "zeros"], "`init` -> nothing: the gradient path imprints")):
        code = main(["increment", *common, *flags])
        error = capsys.readouterr().err
        assert code == 1 and "The command line" in error and named in error, flags
    assert ran == []
    assert {p: p.read_bytes() if p.is_file() else None for p in sorted(tmp_path.rglob("*"))} == before
    # A saved recipe (e.g. a lineage record's) with a removed key: refused by IncrementConfig.from_dict as well.
    from hf_incr import IncrementConfig

    with pytest.raises(ConfigError, match=r"`closed_form_head` -> `head`"):
        IncrementConfig.from_dict({"closed_form_head": False, "warmup_epochs": 3})
    assert IncrementConfig.from_dict({"head": "trained"}).head == "trained"


def test_usage_and_errors_exit_codes(capsys, tmp_path):
    assert main([]) == 2
    assert "train-base" in capsys.readouterr().out
    assert main(["increment", "--train_file", "x.jsonl", "--output_dir", str(tmp_path)]) == 1
    assert "needs `--model_name_or_path`" in capsys.readouterr().err


def test_cli_increment_equals_python_api(tmp_path, base_dir, data_files, capsys):
    train, test = data_files
    out_cli = tmp_path / "cli"
    code = main(["increment", "--model_name_or_path", str(base_dir), "--train_file", str(train), "--eval_file",
                 str(test), "--output_dir", str(out_cli), *FLAGS])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| after |" in printed and str(out_cli) in printed and "Labels added: repair" in printed

    from text_models import training_args
    from transformers import AutoModelForSequenceClassification

    from hf_incr import IncrementConfig, train_increment
    from hf_incr.data import load_text_data

    model = AutoModelForSequenceClassification.from_pretrained(base_dir)
    train_increment(model, tokenizer(), load_text_data(train), load_text_data(test),
                    config=IncrementConfig(warmup_epochs=2, finetune_layers=0, distill_weight=0),
                    args=training_args(tmp_path, output_dir=str(tmp_path / "py"), per_device_train_batch_size=4))
    cli_state = load_file(str(out_cli / "model.safetensors"))
    py_state = load_file(str(tmp_path / "py" / "model.safetensors"))
    for name in py_state:
        torch.testing.assert_close(cli_state[name], py_state[name], atol=1e-6, rtol=1e-6)

    capsys.readouterr()
    assert main(["evaluate", "--model_name_or_path", str(out_cli), "--eval_file", str(test), "--use_cpu",
                 "--report_to", "none"]) == 0
    assert "| model |" in capsys.readouterr().out


@pytest.mark.slow
def test_script_under_accelerate_launch_two_processes(tmp_path, base_dir, data_files):
    """scripts/train_increment.py under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo) gives the
    same model as one process with the same global batch."""
    train, test = data_files
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    common = ["--model_name_or_path", str(base_dir), "--train_file", str(train), "--eval_file", str(test), *FLAGS]
    common[common.index("--per_device_train_batch_size") + 1] = "2"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              "29519"]
    script = str(ROOT / "scripts" / "train_increment.py")
    two = subprocess.run(launch + [script, *common, "--output_dir", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one_flags = [*common]
    one_flags[one_flags.index("--per_device_train_batch_size") + 1] = "4"
    one = subprocess.run([sys.executable, script, *one_flags, "--output_dir", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_file(str(tmp_path / "two" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    assert json.loads((tmp_path / "two" / "lineage.json").read_text())[0]["labels_added"] == ["repair"]

"""The product config: what a user decides, each field documented; removed settings refused with what replaced them."""

from __future__ import annotations

import dataclasses

import pytest

from hf_incr import ConfigError, IncrementConfig
from hf_incr.config import REMOVED


def test_the_config_holds_at_most_24_documented_fields():
    fields = dataclasses.fields(IncrementConfig)
    assert len(fields) <= 24
    assert all(field.metadata.get("help") for field in fields)
    documented = IncrementConfig.__doc__
    assert all(field.name in documented for field in fields)  # every field listed under its group


@pytest.mark.parametrize("name", sorted(REMOVED))
def test_a_removed_setting_in_saved_settings_says_what_replaced_it(name):
    with pytest.raises(ConfigError, match=rf"\['{name}'\], removed from hf_incr: `{name}` -> ") as info:
        IncrementConfig.from_dict({name: 1, "max_length": 32})
    assert REMOVED[name] in str(info.value)


def test_heads_are_named_and_the_gradient_path_is_the_only_one_that_fine_tunes_every_increment():
    assert IncrementConfig().head == "kernel" and IncrementConfig(head="trained").solved is False
    with pytest.raises(ConfigError, match=r"`head` should be one of \['beside_kept', 'kernel', 'linear', 'trained'\]"):
        IncrementConfig(head="ridge")
    with pytest.raises(ConfigError, match="`--head trained`"):
        IncrementConfig(finetune_increments=True)
    assert IncrementConfig(head="trained", finetune_increments=True).finetune_increments


@pytest.mark.parametrize("values, message", [
    (dict(kernel_features=0), "`kernel_features` should be >= 1"),
    (dict(layer_lr_decay=0.0), "`layer_lr_decay` should be in (0, 1]"),
    (dict(replay_per_label=-1), "`replay_per_label` should be >= 0"),
    (dict(multi_label_annotation="some"), "'new' (rows annotate only"),
    (dict(max_length=0), "`max_length` should be >= 1"),
])
def test_bad_values_are_refused_by_name(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        IncrementConfig(**values)


def test_unknown_settings_list_the_known_ones():
    with pytest.raises(ConfigError, match=r"Unknown recipe setting\(s\) \['heads'\]; the known ones are"):
        IncrementConfig.from_dict({"heads": "kernel"})
    assert IncrementConfig.from_dict({"head": "kernel"}).head == "kernel"

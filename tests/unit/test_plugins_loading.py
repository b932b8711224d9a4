"""Plugin loading errors name the plugin and the option; isolation of failing hooks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peerbot.bot.plugins import PluginLoadError, PluginSet, load_plugins
from peerbot.config import PluginEntry, parse_config
from peerbot.core.permissions import CREATOR_POWER, power_level
from peerbot.plugin_api import GuardAction, Question, SpecialtyInfo


def entry(use: str, **options: object) -> PluginEntry:
    return PluginEntry(use=use, options=options, path="plugins[0]", line=7)


def load(*entries: PluginEntry, tmp: Path) -> PluginSet:
    return PluginSet(load_plugins(entries, language="fr", data_root=tmp))


def test_missing_module(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError, match=r"plugins\[0\] \(nope.mod:X\): cannot import"):
        load(entry("nope.mod:X"), tmp=tmp_path)


def test_missing_class_and_not_a_plugin(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError, match="has no 'Missing'"):
        load(entry("sample_plugins:Missing"), tmp=tmp_path)
    with pytest.raises(PluginLoadError, match="must subclass"):
        load(entry("sample_plugins:NotAPlugin"), tmp=tmp_path)


def test_unknown_entry_point(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError, match="no installed plugin named 'ghost'"):
        load(entry("ghost"), tmp=tmp_path)


def test_bad_option_names_plugin_and_option(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError) as info:
        load(entry("plugins.patient_data_guard:PatientDataGuard", action="explode"), tmp=tmp_path)
    assert str(info.value).startswith("plugins[0].options.action (plugins.patient_data_guard")
    assert "(line 7)" in str(info.value)
    with pytest.raises(PluginLoadError, match=r"options\.score.*must be a number"):
        load(
            entry("sample_plugins:FixedRouter", word="x", specialty="A", score="high"), tmp=tmp_path
        )


async def test_raising_and_slow_plugins_are_skipped_and_counted(tmp_path: Path) -> None:
    plugins = load(
        entry("sample_plugins:RaisingRouter"),
        entry("sample_plugins:SlowGuard"),
        entry("sample_plugins:FixedRouter", word="ecg", specialty="Cardio"),
        tmp=tmp_path,
    )
    q = Question("ECG ?", "!r:x", "@a:x", "$e")
    proposals = await plugins.propose(q, [SpecialtyInfo("Cardio", "!c:x")])
    assert [(p.plugin, p.specialty) for p in proposals] == [("FixedRouter", "Cardio")]
    verdicts = await plugins.check(q)
    assert verdicts == []
    raising, slow, _ = plugins.plugins
    assert raising.errors == 1 and slow.timeouts == 1 and slow.errors == 1


async def test_shipped_guard_holds_without_quoting(tmp_path: Path) -> None:
    plugins = load(entry("plugins.patient_data_guard:PatientDataGuard"), tmp=tmp_path)
    text = "Mme Dupont, NIR 2 84 05 2A 123 456 00, joignable au 06 12 34 56 78"
    ((_, verdict),) = await plugins.check(Question(text, "!r:x", "@a:x", "$e"))
    assert verdict.action is GuardAction.HOLD
    assert {f.kind for f in verdict.findings} >= {"name", "phone"}
    for f in verdict.findings:
        assert "06 12" not in f.label + f.why and "Dupont" not in f.label + f.why


def test_check_config_reports_plugin_errors(tmp_path: Path) -> None:
    cfg = {
        "matrix": {"homeserver": "http://127.0.0.1:1", "user_id": "@b:x", "password": "p"},
        "routing": {"fallback_room": "#t:x"},
        "plugins": [{"use": "plugins.urgent_wording:UrgentWording", "options": {"nope": 1}}],
    }
    path = tmp_path / "bot.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "peerbot.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "plugins[0].options.nope" in run.stderr


def test_plugins_config_section() -> None:
    text = json.dumps(
        {
            "matrix": {"homeserver": "http://h", "user_id": "@b:x", "password": "p"},
            "routing": {"fallback_room": "#t:x"},
            "plugins": [
                {"use": "a.b:C", "rooms": ["#r:x"], "options": {"k": 1}},
                {"use": "bad use!"},
            ],
        }
    )
    with pytest.raises(Exception, match=r"plugins\[1\]\.use: must be module.path:ClassName"):
        parse_config(text, env={})


def test_power_levels_v12_creators() -> None:
    create = {
        "sender": "@creator:x",
        "content": {"room_version": "12", "additional_creators": ["@co:x"]},
    }
    levels = {"users": {"@mod:x": 50}, "users_default": 0}
    assert power_level("@creator:x", create, levels) == CREATOR_POWER
    assert power_level("@co:x", create, levels) == CREATOR_POWER
    assert power_level("@mod:x", create, levels) == 50
    assert power_level("@nobody:x", create, levels) == 0
    old = {"sender": "@creator:x", "content": {"room_version": "10"}}
    assert power_level("@creator:x", old, levels) == 0
    assert power_level("@creator:x", old, None) == 100
    assert power_level("@x:x", old, {"users_default": "7"}) == 7

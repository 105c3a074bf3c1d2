"""Config validation: defaults, unknown keys, bad values, sheets, presets and the single-subject shortcut."""

from __future__ import annotations

import pytest

from pipeline import config as cfg
from pipeline.io import PipelineError


def _sheets(tmp_path, subjects: str, drives: str = "subject\taudio_id\taudio\n") -> dict:
    (tmp_path / "subjects.tsv").write_text(subjects)
    (tmp_path / "drives.tsv").write_text(drives)
    return {"subjects": str(tmp_path / "subjects.tsv"), "drives": str(tmp_path / "drives.tsv")}


def test_defaults_are_filled(tmp_path):
    s = cfg.load(_sheets(tmp_path, "subject\tvideo\nalice\ta.mp4\n"))
    assert s.config["prepare"]["resolution"] == 512
    assert s.subjects["alice"] == cfg.Subject("alice", "a.mp4", "default", 512, "whisper")


def test_unknown_key_fails_naming_it(tmp_path):
    with pytest.raises(PipelineError, match=r"prepare: Additional properties .*'resolutoin'"):
        cfg.load({**_sheets(tmp_path, "subject\tvideo\na\ta.mp4\n"), "prepare": {"resolutoin": 256}})


def test_bad_value_fails_naming_key(tmp_path):
    with pytest.raises(PipelineError, match=r"prepare.resolution: 100000 is greater than the maximum"):
        cfg.load({**_sheets(tmp_path, "subject\tvideo\na\ta.mp4\n"), "prepare": {"resolution": 100000}})
    with pytest.raises(PipelineError, match=r"preset: 'fast' is not one of"):
        cfg.load({**_sheets(tmp_path, "subject\tvideo\na\ta.mp4\n"), "preset": "fast"})


def test_sheet_overrides_preset_overrides_config(tmp_path):
    sheet = "subject\tvideo\tpreset\tresolution\na\ta.mp4\tcpu\t\nb\tb.mp4\tcpu\t384\nc\tc.mp4\t\t\n"
    s = cfg.load({**_sheets(tmp_path, sheet), "prepare": {"resolution": 320},
                  "presets": {"cpu": {"resolution": 256}}})
    assert (s.subjects["a"].resolution, s.subjects["b"].resolution, s.subjects["c"].resolution) == (256, 384, 320)
    assert s.subjects["a"].preset == "cpu" and s.subjects["c"].preset == "default"


def test_sheet_extractor_overrides_the_config(tmp_path):
    sheet = "subject\tvideo\textractor\na\ta.mp4\tmel\nb\tb.mp4\t\n"
    s = cfg.load({**_sheets(tmp_path, sheet), "audio": {"extractor": "ppg"}})
    assert (s.subjects["a"].extractor, s.subjects["b"].extractor) == ("mel", "ppg")
    with pytest.raises(PipelineError, match="extractor: 'melody' is not one of"):
        cfg.load(_sheets(tmp_path, "subject\tvideo\textractor\na\ta.mp4\tmelody\n"))


def test_auto_preset_follows_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(cfg, "cuda_available", lambda: False)
    s = cfg.load(_sheets(tmp_path, "subject\tvideo\tpreset\na\ta.mp4\tauto\n"))
    assert s.subjects["a"].preset == "cpu" and s.subjects["a"].resolution == 512
    monkeypatch.setattr(cfg, "cuda_available", lambda: True)
    s = cfg.load(_sheets(tmp_path, "subject\tvideo\tpreset\na\ta.mp4\tauto\n"))
    assert s.subjects["a"].preset == "default" and s.subjects["a"].resolution == 512


def test_bad_sheet_rows(tmp_path):
    with pytest.raises(PipelineError, match=r"subjects.tsv line 2: invalid configuration\n  subject: 'bad name'"):
        cfg.load(_sheets(tmp_path, "subject\tvideo\nbad name\ta.mp4\n"))
    with pytest.raises(PipelineError, match="'video' is a required property"):
        cfg.load(_sheets(tmp_path, "subject\tvideo\na\t\n"))
    with pytest.raises(PipelineError, match="appears twice"):
        cfg.load(_sheets(tmp_path, "subject\tvideo\na\ta.mp4\na\tb.mp4\n"))
    with pytest.raises(PipelineError, match="sheet not found"):
        cfg.load({"subjects": str(tmp_path / "nope.tsv")})


def test_drives_must_name_known_subjects(tmp_path):
    sheets = _sheets(tmp_path, "subject\tvideo\na\ta.mp4\n", "subject\taudio_id\taudio\nzed\tx\tx.wav\n")
    with pytest.raises(PipelineError, match=r"drives.tsv line 2: subject 'zed' is not in .*known: a"):
        cfg.load(sheets)
    sheets = _sheets(tmp_path, "subject\tvideo\na\ta.mp4\n", "subject\taudio_id\taudio\na\ttest\tx.wav\n")
    with pytest.raises(PipelineError, match="audio_id"):
        cfg.load(sheets)


def test_single_subject_shortcut(tmp_path):
    sheets = _sheets(tmp_path, "subject\tvideo\na\ta.mp4\n", "subject\taudio_id\taudio\na\tx\tx.wav\n")
    s = cfg.load({**sheets, "video": "new.mp4", "subject": "bob"})
    assert list(s.subjects) == ["bob"] and s.subjects["bob"].video == "new.mp4"
    assert s.drives == []  # the sheet's drives belong to other subjects
    with pytest.raises(PipelineError, match="give both"):
        cfg.load({**sheets, "video": "new.mp4"})


def test_shipped_config_is_valid(repo, monkeypatch):
    import yaml

    monkeypatch.chdir(repo)
    s = cfg.load(yaml.safe_load((repo / "config" / "config.yaml").read_text()))
    assert "demo" in s.subjects and s.subjects["demo"].video == "resources/demo/video.mp4"
    assert [d.subject for d in s.drives] == ["demo"]


def test_cpu_preset_renders_at_256_from_512_frames(tmp_path):
    """The cpu preset prepares real footage at 512² (the mouth box needs it) and renders at 256² (3.8x faster
    than 512², and a 128² head has no finer detail); the default preset renders at the frame size; a preset's
    unknown render key fails."""
    s = cfg.load(_sheets(tmp_path, "subject\tvideo\tpreset\na\ta.mp4\tcpu\nb\tb.mp4\tdefault\n"))
    assert s.subjects["a"].resolution == 512
    assert cfg.stage_settings(s.config, "cpu", "render")["resolution"] == 256
    assert cfg.stage_settings(s.config, "default", "render")["resolution"] is None
    with pytest.raises(PipelineError, match=r"presets.cpu.render"):
        cfg.load({**_sheets(tmp_path, "subject\tvideo\na\ta.mp4\n"), "presets": {"cpu": {"render": {"size": 256}}}})

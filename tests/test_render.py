"""Rendering: ping-pong schedule, driven and test-split renders (with a test double of the fine model),
paste-back and the user command's errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import render
from pipeline.audio import AudioFeatureConfig, AudioStats, drive_features
from pipeline.io import save_json
from pipeline.media import iter_frames, probe, write_wav
from pipeline.render import RenderConfig, Scene, pingpong, render_drive, render_test
from tests.render_double import TUFT, MouthDouble, make_render_subject, speech, tuft_green


def test_pingpong_goes_forward_then_backward_without_repeating_turns():
    assert pingpong(10, [3, 4, 5, 6]).tolist() == [3, 4, 5, 6, 5, 4, 3, 4, 5, 6]
    assert pingpong(3, [7]).tolist() == [7, 7, 7]
    assert pingpong(0, [1, 2]).tolist() == []
    long = pingpong(1000, list(range(17)))
    assert long.min() == 0 and long.max() == 16 and np.abs(np.diff(long)).max() == 1  # never jumps
    with pytest.raises(ValueError):
        pingpong(3, [])


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return make_render_subject(tmp_path_factory.mktemp("results"))


def mouth_area(frame: np.ndarray) -> float:
    """Dark (mouth) pixels of a frame of the double, counted with sub-pixel weight."""
    grey = frame.astype(np.float64).mean(axis=2)
    return float(np.clip((120 - grey) / 80, 0, 1).sum())


def test_driven_render_follows_the_audio_frame_by_frame(subject, tmp_path):
    samples = speech(3.0, seed=5)
    wav = tmp_path / "drive.wav"
    write_wav(wav, samples, 16000)
    features, _ = drive_features(wav, AudioStats.load(subject.audio_stats("mel")), AudioFeatureConfig())
    model = MouthDouble()
    scene = Scene(subject, resolution=96, device=torch.device("cpu"))  # trained at 64², rendered at 96²
    out = tmp_path / "drive.mp4"
    stats = render_drive(model, features, wav, scene, out, RenderConfig())
    info = probe(out)
    assert info.has_audio and (info.width, info.height) == (96, 96)
    assert abs(info.duration - 3.0) <= 0.04 + 0.03  # ± one frame, plus AAC's priming granularity
    frames = list(iter_frames(out))
    assert len(frames) == len(features) == 75 == stats.frames
    codes = model.audio_codes(torch.from_numpy(features))[:, 0].numpy()
    area = np.array([mouth_area(f) for f in frames])
    lags = {lag: np.corrcoef(area[max(0, lag):len(area) + min(0, lag)],
                             codes[max(0, -lag):len(codes) - max(0, lag)])[0, 1] for lag in range(-3, 4)}
    assert lags[0] > 0.95 and max(lags, key=lags.get) == 0
    # blink of the scheduled training frame reaches the model
    schedule = pingpong(75, scene.cameras.train)
    np.testing.assert_allclose(model.calls, scene.blink[schedule], rtol=1e-6)


def face_centre(frame: np.ndarray) -> np.ndarray:
    # tight enough to leave out the neck's (200, 150, 120)
    skin = (np.abs(frame.astype(np.float64) - np.array([217, 166, 140])).sum(axis=2) < 40)
    yy, xx = np.nonzero(skin)
    return np.array([xx.mean(), yy.mean()])


def test_test_split_uses_its_own_poses_torsos_and_audio(subject, tmp_path):
    scene = Scene(subject, resolution=None, device=torch.device("cpu"))
    features = np.load(subject.audio_features("mel"))
    out = tmp_path / "test.mp4"
    render_test(MouthDouble(), features, subject.audio_wav, scene, out, RenderConfig())
    frames = list(iter_frames(out))
    test = scene.cameras.test
    assert len(frames) == len(test) >= 2 and probe(out).has_audio
    for frame, i in zip(frames, test):
        w2c = scene.cameras.world_to_camera[i]
        uvw = scene.cameras.K @ w2c[:3, 3]  # the head frame's origin, where the ellipsoid is centred
        assert np.linalg.norm(face_centre(frame) - uvw[:2] / uvw[2]) < 2.0
        assert np.abs(frame[-3:, :8].astype(int) - (40, 120, 40)).max() < 12  # the torso's shoulders
        # the hair tuft the head does not cover: its own frame's pixels on the silhouette ring, plate inside
        luma = frame.astype(float) @ (0.299, 0.587, 0.114)
        assert luma[TUFT][0, 4:10].mean() > luma[8:10, 6:12].mean() + 40


def test_scene_outline_is_the_scheduled_frames_silhouette_at_the_output_size(subject):
    scene = Scene(subject, resolution=96, device=torch.device("cpu"))  # stored at 64²
    seam = RenderConfig().seam
    for i in (3, 12):
        torso, outline = scene.layers(i, seam)
        assert torso.shape == outline.shape == (96, 96, 4)
        ring, inside = (7, 12), (13, 12)  # the tuft's top row and its middle, at 96²
        assert outline[ring + (3,)] == 255 and outline[inside + (3,)] == 0
        assert abs(int(outline[ring + (1,)]) - tuft_green(i)) < 12  # frame i's own tuft
    assert scene.layers(3, RenderConfig(outline=0).seam)[1] is None


def test_paste_back_places_the_crop_in_the_full_frame(subject, tmp_path, make_clip):
    source = make_clip("wide.mp4", size="160x120", duration=2.0)
    crop = [60, 20, 80, 80]
    meta = tmp_path / "video.json"
    save_json(meta, {"source": str(source), "crop": crop, "source_size": [160, 120]})
    wav = tmp_path / "drive.wav"
    write_wav(wav, speech(1.0, seed=6), 16000)
    features, _ = drive_features(wav, AudioStats.load(subject.audio_stats("mel")), AudioFeatureConfig())
    scene = Scene(subject, resolution=None, device=torch.device("cpu"))
    out = tmp_path / "pasted.mp4"
    render_drive(MouthDouble(), features, wav, scene, out, RenderConfig(paste_back=True), video_json=meta)
    frames = list(iter_frames(out))
    source_frames = list(iter_frames(source, fps=25))
    assert frames[0].shape == (120, 160, 3) and len(frames) == 25
    schedule = pingpong(25, scene.cameras.train)
    for t in (0, 12, 24):
        def left_of_crop_error(k: int) -> float:
            return np.abs(frames[t][:, :50].astype(int) - source_frames[k][:, :50]).mean()

        # around the crop: the source frame of the scheduled training frame (codec noise only), not another one
        assert left_of_crop_error(schedule[t]) < 8 < left_of_crop_error(schedule[t] + 10)
        inside = frames[t][30:90, 70:130]  # the crop's interior: the composite, not the source
        assert np.abs(inside.astype(int) - source_frames[schedule[t]][30:90, 70:130]).mean() > 20
        assert np.linalg.norm(face_centre(inside) - (30, 30)) < 12  # the rendered face lies inside the crop


@pytest.mark.parametrize("kind", ["no_audio", "silent", "too_short"])
def test_user_command_refuses_bad_audio_and_keeps_the_old_output(kind, subject, tmp_path, make_clip, capsys):
    if kind == "no_audio":
        bad = make_clip("silent_film.mp4", audio=False, duration=1.0)
        message = "has no audio stream"
    elif kind == "silent":
        bad = tmp_path / "silence.wav"
        write_wav(bad, np.zeros(16000, np.float32), 16000)
        message = "silent"
    else:
        bad = tmp_path / "blip.wav"
        write_wav(bad, speech(1.0, seed=1)[:300], 16000)
        message = "shorter than one video frame"
    out = tmp_path / "speech.mp4"
    out.write_bytes(b"an earlier render")
    code = render.main(["--subject", subject.root.name, "--results", str(subject.root.parent), "--audio", str(bad),
                        "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and message in err and str(bad) in err
    assert out.read_bytes() == b"an earlier render"
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_user_command_names_a_missing_subject_or_model(subject, tmp_path, capsys):
    wav = tmp_path / "ok.wav"
    write_wav(wav, speech(1.0, seed=2), 16000)
    args = ["--results", str(subject.root.parent), "--audio", str(wav), "--out", str(tmp_path / "o.mp4")]
    assert render.main(["--subject", "nobody", *args]) == 1
    assert "nobody: no such subject" in capsys.readouterr().err
    assert render.main(["--subject", subject.root.name, *args]) == 1
    assert "fine.pt: trained model not found; run the train_fine stage" in capsys.readouterr().err


def test_unknown_render_setting_is_an_error():
    with pytest.raises(Exception, match="unknown keys pastback"):
        RenderConfig.from_dict({"pastback": True})


def test_schema_defaults_equal_the_dataclass_defaults(repo):
    import dataclasses

    import yaml

    schema = yaml.safe_load((repo / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["render"]["properties"]
    defaults = dataclasses.asdict(RenderConfig())
    assert {k: v["default"] for k, v in props.items()} == defaults


def test_drive_on_the_command_line_renders_for_every_subject(tmp_path):
    from pipeline import config as pipeline_config

    (tmp_path / "s.tsv").write_text("subject\tvideo\na\ta.mp4\nb\tb.mp4\n")
    s = pipeline_config.load({"subjects": str(tmp_path / "s.tsv"), "drives": str(tmp_path / "none.tsv"),
                              "drive": "talks/My speech.m4a"})
    assert [(d.subject, d.audio_id, d.audio) for d in s.drives] == [("a", "My_speech", "talks/My speech.m4a"),
                                                                    ("b", "My_speech", "talks/My speech.m4a")]
    with pytest.raises(Exception, match="reserved"):
        pipeline_config.load({"subjects": str(tmp_path / "s.tsv"), "drives": str(tmp_path / "none.tsv"),
                              "drive": "test.wav"})

"""Stage ``prepare_video``: any common video becomes 25 fps square head crops, 16 kHz audio and video.json.

The square crop is chosen once per video from MediaPipe face boxes detected on a sparse sample of frames
(the union of the boxes, grown by a margin so head and shoulders fit, shifted to stay inside the frame) and
is fixed for the whole video, so the camera stays static for tracking. Frames are cut, scaled and
JPEG-encoded by ffmpeg itself, streaming, so memory does not grow with video length.

Frame-count contract: a video whose first video stream spans ``start`` to ``end`` (its frames' presentation
times, the last frame's duration included; see ``media.video_timing``) becomes exactly
N = round((end - start) x fps) frames, halves up. Frame k shows the source frame on screen at
``start + k / fps`` (ffmpeg's ``fps`` filter, nearest frame, on a clock that starts at the video's first
frame: a video that starts after its container, e.g. after its audio, gets no repeated leading frames and
loses none at the end); where a ffmpeg release's end-of-stream handling yields fewer, the last frame is
repeated, and extra ones are dropped. The container's duration (which a longer audio track extends, and
which releases compute differently) plays no part, so every accepted ffmpeg cuts the same frames.

Sync contract: ``audio.wav`` sample i plays at ``start + i / sample_rate``, so frame k's interval holds
samples [k x sample_rate / fps, (k + 1) x sample_rate / fps), whenever the audio stream starts: audio from
before the video's first frame is cut, an audio stream that starts later is preceded by silence, and the end
is cut or silence-padded to N / fps seconds. The two starts are ffmpeg's timestamps on one timeline (the
video's first frame, ``media.video_timing``; the first decoded audio sample, ``media.audio_start``), and the
cut counts samples, so it is exact to a sample with every accepted ffmpeg.

``video.json`` records: ``source`` (path), ``source_fps``, ``source_size`` [w, h] after autorotation,
``rotation``, ``duration`` (s, of the video stream), ``crop`` [x, y, side, side] in source pixels,
``resolution``, ``fps``, ``frame_count``, ``audio_sample_rate``, ``face_boxes`` (sampled [t, x, y, w, h] in
source pixels) and ``faces_per_frame_max``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from pipeline import cli
from pipeline.io import PipelineError, atomic_dir, atomic_path, save_json
from pipeline.media import (MONO_MIX, StreamInfo, VideoTiming, audio_start, iter_frames, probe, run_ffmpeg,
                            video_timing)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoConfig:
    resolution: int = 512  # side of the output frames
    fps: int = 25
    sample_rate: int = 16000
    crop_scale: float = 2.6  # crop side as a multiple of the median face-box size
    min_duration: float = 2.0  # seconds
    detect_samples: int = 120  # frames sampled for face boxes (spread over the video)
    detect_size: int = 480  # longer side the sampled frames are scaled to for detection
    jpeg_quality: int = 2  # ffmpeg -q:v, 2 is near-lossless


# ---------------------------------------------------------------- pure core

def choose_crop(boxes: np.ndarray, frame_size: tuple[int, int], crop_scale: float) -> tuple[int, int, int]:
    """Square crop (x, y, side) in pixels containing every face box with a head-and-shoulders margin.

    ``boxes`` [K, 4] are (x, y, w, h). The side is ``crop_scale`` × the median face size, at least the
    union of the boxes plus one face of margin, at most the frame's short side; the centre sits a little
    below the faces' centre (shoulders matter more than the space above the hair) and is shifted so the
    crop stays inside the frame.
    """
    if len(boxes) == 0:
        raise ValueError("no face boxes")
    width, height = frame_size
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = (boxes[:, 0] + boxes[:, 2]).max(), (boxes[:, 1] + boxes[:, 3]).max()
    face = float(np.median(np.maximum(boxes[:, 2], boxes[:, 3])))
    side = max(crop_scale * face, max(x1 - x0, y1 - y0) + face)
    side = int(min(side, width, height))
    side -= side % 2
    cx = (x0 + x1) / 2
    cy = (y0 + y1) / 2 + 0.12 * face
    x = int(round(np.clip(cx - side / 2, 0, width - side)))
    y = int(round(np.clip(cy - side / 2, 0, height - side)))
    return x, y, side


def largest_face(detections: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """The (x, y, w, h) box of largest area."""
    return max(detections, key=lambda b: b[2] * b[3])


# ---------------------------------------------------------------- I/O

def check_input(path: Path, cfg: VideoConfig) -> tuple[StreamInfo, VideoTiming]:
    """Probe and validate; raise PipelineError naming the file and the problem."""
    info = probe(path)
    if not info.has_video:
        raise PipelineError(f"{path}: has no video stream")
    if not info.has_audio:
        raise PipelineError(f"{path}: has no audio track (the model learns from the subject's speech)")
    if info.display_size is None:
        raise PipelineError(f"{path}: could not read the video's frame size")
    if info.duration is None:
        raise PipelineError(f"{path}: could not read the duration (corrupt or truncated file?)")
    timing = video_timing(path)
    if timing.duration < cfg.min_duration:
        raise PipelineError(
            f"{path}: clip is {timing.duration:.2f} s long, shorter than the {cfg.min_duration:g} s minimum")
    return info, timing


def detect_face_boxes(path: Path, info: StreamInfo, duration: float, cfg: VideoConfig) -> tuple[np.ndarray, int]:
    """Face boxes [K, 5] (t, x, y, w, h) in source display pixels on sampled frames; max faces seen."""
    import mediapipe as mp

    width, height = info.display_size  # type: ignore[misc]
    scale = min(1.0, cfg.detect_size / max(width, height))
    small = (max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2))
    rate = min(float(cfg.fps), cfg.detect_samples / max(duration, 1e-3))
    boxes, most = [], 0
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det:
        for k, frame in enumerate(iter_frames(path, fps=rate, size=small)):
            result = det.process(frame)
            found = [d.location_data.relative_bounding_box for d in (result.detections or [])]
            if not found:
                continue
            most = max(most, len(found))
            x, y, w, h = largest_face([(b.xmin, b.ymin, b.width, b.height) for b in found])
            boxes.append((k / rate, x * width, y * height, w * width, h * height))
    if not boxes:
        raise PipelineError(f"{path}: no face found in any of the sampled frames")
    if most > 1:
        log.warning("%s: up to %d faces in a frame; using the largest", path, most)
    return np.asarray(boxes, dtype=np.float64), most


# End-of-stream handling differs between ffmpeg releases by at most a frame or so: a few repeats of the
# last frame cover it; a video that decodes to fewer frames still is truncated or corrupt.
END_PAD_FRAMES = 3


def extract_frames(path: Path, crop: tuple[int, int, int], start: float, count: int, out_dir: Path,
                   cfg: VideoConfig) -> int:
    """ffmpeg writes ``count`` frames ``%06d.jpg`` (from 000000) into ``out_dir``, frame k the source at
    ``start + k / fps`` (the module's frame-count contract); returns how many it wrote, fewer only when the
    video does not decode to its end."""
    x, y, side = crop
    # Time 0 moved to the video's start: else ffmpeg's constant-rate output starts at the container's start,
    # repeating the first frame until the video begins and dropping as many at the end.
    vf = (f"setpts=PTS-({start:.9f})/TB,fps={cfg.fps},crop={side}:{side}:{x}:{y},"
          f"scale={cfg.resolution}:{cfg.resolution}:flags=area,tpad=stop={END_PAD_FRAMES}:stop_mode=clone")
    run_ffmpeg(path, "decode the video", "-i", str(path), "-map", "0:v:0", "-an", "-vf", vf, "-frames:v", str(count),
               "-q:v", str(cfg.jpeg_quality), "-start_number", "0", "-f", "image2", str(out_dir / "%06d.jpg"))
    return sum(1 for p in out_dir.iterdir() if p.suffix == ".jpg")


def audio_lead(video_start: float, first_sample: float, sample_rate: int) -> int:
    """Samples to cut from the start of the decoded audio (> 0; its ``first_sample`` plays before the video's
    first frame, both in s) or, negated, of silence to put before it (< 0; it starts later), so that sample 0
    plays at the video's first frame."""
    return int(round((video_start - first_sample) * sample_rate))


def align_filter(lead: int, n_samples: int) -> str:
    """ffmpeg audio filter: cut ``lead`` samples from the start (or pad -``lead`` of silence), then pad or cut
    the end to exactly ``n_samples``. Counts samples, not timestamps, so it is exact with every release."""
    head = f"atrim=start_sample={lead}," if lead > 0 else f"adelay=delays={-lead}S," if lead < 0 else ""
    return f"{head}apad=whole_len={n_samples},atrim=end_sample={n_samples}"


def write_audio_track(path: Path, start: float, n_frames: int, out: str | Path, cfg: VideoConfig) -> None:
    """16 kHz mono wav of the ``n_frames`` video frames from ``start`` (s, the video's start): sample 0 plays
    at frame 0, whenever the audio stream starts (cut before the video's start, silence-padded where the
    audio starts later or ends sooner, cut at the end).

    Streamed through ffmpeg twice (decode to a scratch file, then align) so memory stays flat in video
    length; the scratch file's length tells a truncated audio track apart from a short pad.
    """
    n_samples = int(round(n_frames * cfg.sample_rate / cfg.fps))
    lead = audio_lead(start, audio_start(path), cfg.sample_rate)
    with tempfile.TemporaryDirectory(dir=Path(out).parent) as scratch:
        full = Path(scratch) / "full.wav"
        run_ffmpeg(path, "decode its audio", "-i", str(path), "-vn", "-map", "0:a:0", *MONO_MIX,
                   "-ar", str(cfg.sample_rate), "-c:a", "pcm_s16le", "-f", "wav", str(full))
        reach = soundfile.info(str(full)).frames - lead  # the audio's end, in samples from the video's start
        if reach < 0.9 * n_samples:
            raise PipelineError(f"{path}: audio track ends {reach / cfg.sample_rate:.2f} s into the "
                                f"{n_frames / cfg.fps:.2f} s video (truncated audio?)")
        with atomic_path(out) as tmp:
            run_ffmpeg(path, "write its audio", "-i", str(full), "-af", align_filter(lead, n_samples),
                       "-c:a", "pcm_s16le", "-f", "wav", str(tmp))


def prepare_video(video: str | Path, frames_dir: str | Path, audio_out: str | Path,
                  json_out: str | Path, cfg: VideoConfig) -> dict:
    path = Path(video)
    info, timing = check_input(path, cfg)
    boxes, most = detect_face_boxes(path, info, timing.duration, cfg)
    crop = choose_crop(boxes[:, 1:], info.display_size, cfg.crop_scale)  # type: ignore[arg-type]
    log.info("%s: %dx%d, video %.2f-%.2f s, crop %s", path, *info.display_size,  # type: ignore[misc]
             timing.start, timing.end, crop)
    expected = timing.frame_count(cfg.fps)
    with atomic_dir(frames_dir) as tmp:
        count = extract_frames(path, crop, timing.start, expected, tmp, cfg)
        if count != expected:
            raise PipelineError(f"{path}: decoded {count} of {expected} expected frames (truncated or corrupt)")
        write_audio_track(path, timing.start, count, audio_out, cfg)
    meta = {
        "source": str(path),
        "source_fps": info.fps,
        "source_size": list(info.display_size),  # type: ignore[arg-type]
        "rotation": info.rotation,
        "duration": round(timing.duration, 6),
        "crop": [crop[0], crop[1], crop[2], crop[2]],
        "resolution": cfg.resolution,
        "fps": cfg.fps,
        "frame_count": count,
        "audio_sample_rate": cfg.sample_rate,
        "face_boxes": np.round(boxes, 2).tolist(),
        "faces_per_frame_max": most,
    }
    save_json(json_out, meta)
    return meta


def crop_to_frame(points: np.ndarray, meta: dict) -> np.ndarray:
    """Map source-pixel points [..., 2] into prepared-frame pixels using video.json's crop."""
    x, y, side, _ = meta["crop"]
    return (np.asarray(points, dtype=np.float64) - (x, y)) * (meta["resolution"] / side)


# ---------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Prepare a subject video: frames, audio and video.json")
    p.add_argument("--video", required=True, type=Path)
    p.add_argument("--frames", required=True, type=Path, help="output frame directory")
    p.add_argument("--audio", required=True, type=Path, help="output 16 kHz mono wav")
    p.add_argument("--json", required=True, type=Path, help="output video.json")
    p.add_argument("--resolution", type=int, default=VideoConfig.resolution)
    p.add_argument("--crop-scale", type=float, default=VideoConfig.crop_scale)
    p.add_argument("--min-duration", type=float, default=VideoConfig.min_duration)
    return p


def _run(args: argparse.Namespace) -> None:
    cfg = VideoConfig(resolution=args.resolution, crop_scale=args.crop_scale, min_duration=args.min_duration)
    meta = prepare_video(args.video, args.frames, args.audio, args.json, cfg)
    log.info("wrote %d frames to %s", meta["frame_count"], args.frames)


def main(argv: list[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())

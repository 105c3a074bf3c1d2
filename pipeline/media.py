"""ffmpeg access: locating the binary, probing files, streaming frames and decoding audio.

The system ffmpeg is used when on PATH; otherwise the binary shipped inside the ``imageio-ffmpeg`` wheel,
so a fresh machine with no system ffmpeg still works. ffprobe is not assumed: probing parses
``ffmpeg -i`` output, which every ffmpeg build (including imageio-ffmpeg's) provides.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.io import PipelineError


@functools.lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - imageio-ffmpeg is a required dependency
        raise PipelineError("ffmpeg not found on PATH and imageio-ffmpeg is not installed") from err
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class StreamInfo:
    """What ``ffmpeg -i`` says of a media file."""

    path: Path
    duration: float | None  # seconds, container duration
    width: int | None
    height: int | None
    fps: float | None  # nominal frame rate of the video stream
    rotation: int  # display rotation in degrees (phone videos), applied by ffmpeg's autorotate
    has_video: bool
    has_audio: bool
    audio_rate: int | None

    @property
    def display_size(self) -> tuple[int, int] | None:
        """(width, height) after ffmpeg's autorotation."""
        if self.width is None or self.height is None:
            return None
        if self.rotation % 180 == 90:
            return self.height, self.width
        return self.width, self.height


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\S+.*?: Video: (?P<rest>.*)")
_AUDIO = re.compile(r"Stream #\S+.*?: Audio: (?P<rest>.*)")
_SIZE = re.compile(r"(?<![0-9x])(\d{2,5})x(\d{2,5})(?![0-9x])")
_FPS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:fps|tbr)")
_RATE = re.compile(r"(\d+)\s*Hz")
_ROTATE = re.compile(r"(?:rotate\s*:\s*|rotation of\s*)(-?\d+(?:\.\d+)?)")


def probe(path: str | Path) -> StreamInfo:
    """Probe a media file; raises PipelineError naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: file not found")
    if not path.is_file():
        raise PipelineError(f"{path}: not a file")
    proc = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-nostdin", "-i", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
    )
    text = proc.stderr
    if "Invalid data found" in text or "could not find codec parameters" in text.lower() or (
        "Stream #" not in text
    ):
        raise PipelineError(f"{path}: not a readable media file (corrupt, truncated or unknown format)")
    duration = None
    if m := _DURATION.search(text):
        duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    width = height = None
    fps = None
    has_video = False
    if m := _VIDEO.search(text):
        rest = m["rest"]
        # cover art in audio files is an attached picture, not a video
        if "attached pic" not in rest:
            has_video = True
            if s := _SIZE.search(rest):
                width, height = int(s[1]), int(s[2])
            if f := _FPS.search(rest):
                fps = float(f[1])
    has_audio = False
    audio_rate = None
    if m := _AUDIO.search(text):
        has_audio = True
        if r := _RATE.search(m["rest"]):
            audio_rate = int(r[1])
    rotation = 0
    if m := _ROTATE.search(text):
        rotation = int(round(float(m[1]))) % 360
    return StreamInfo(path, duration, width, height, fps, rotation, has_video, has_audio, audio_rate)


# Downmix to mono as the mean of the channels: ffmpeg's default gives each stereo channel 1/sqrt(2), so
# identical channels came out 3 dB louder than mono (and could clip).
MONO_MIX = ("-rematrix_maxval", "1.0", "-ac", "1")


def run_ffmpeg(path: str | Path, what: str, *args: str) -> bytes:
    """Run ffmpeg with ``args``; stdout bytes, or PipelineError '{path}: ffmpeg could not {what}: ...'."""
    proc = subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", *args], capture_output=True)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise PipelineError(f"{path}: ffmpeg could not {what}: {' | '.join(tail)}")
    return proc.stdout


def decode_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream of any media file to mono float32 at ``sample_rate``."""
    path = Path(path)
    info = probe(path)
    if not info.has_audio:
        raise PipelineError(f"{path}: has no audio stream")
    raw = run_ffmpeg(path, "decode its audio", "-i", str(path), "-vn", "-map", "0:a:0", *MONO_MIX,
                     "-ar", str(sample_rate), "-f", "f32le", "-")
    return np.frombuffer(raw, dtype="<f4").copy()


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono float samples as 16-bit PCM WAV, atomically."""
    import soundfile

    from pipeline.io import atomic_path

    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


def iter_frames(
    path: str | Path,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
) -> Iterator[np.ndarray]:
    """Stream RGB uint8 frames [H,W,3] one at a time (constant memory in video length).

    ``fps`` resamples to a constant rate (duplicating/dropping frames of VFR input); ``size`` is the
    output (w, h). Frames are upright: ffmpeg applies the display rotation.
    """
    path = Path(path)
    info = probe(path)
    if not info.has_video:
        raise PipelineError(f"{path}: has no video stream")
    filters = []
    if fps is not None:
        filters.append(f"fps={fps}")
    out_w, out_h = info.display_size or (0, 0)
    if size is not None:
        filters.append(f"scale={size[0]}:{size[1]}:flags=area")
        out_w, out_h = size
    cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-an"]
    if filters:
        cmd += ["-vf", ",".join(filters)]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    frame_bytes = out_w * out_h * 3
    if frame_bytes <= 0:
        raise PipelineError(f"{path}: could not read the video's frame size")
    # stderr is not read while frames stream, so it must not be a pipe that could fill up and block ffmpeg
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        while True:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                break
            yield np.frombuffer(buf, dtype=np.uint8).reshape(out_h, out_w, 3)
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()


def encode_video(
    frames: Iterator[np.ndarray],
    path: str | Path,
    fps: float,
    audio: str | Path | None = None,
    crf: int = 18,
) -> None:
    """Encode RGB uint8 frames to H.264/yuv420p MP4 (audio muxed as AAC), atomically."""
    from pipeline.io import atomic_path

    path = Path(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise PipelineError(f"{path}: no frames to encode")
    h, w = first.shape[:2]
    with atomic_path(path) as tmp:
        cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
        if audio is not None:
            cmd += ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k",
                    "-shortest"]
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-movflags", "+faststart", "-f", "mp4", str(tmp)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None
        try:
            proc.stdin.write(np.ascontiguousarray(first).tobytes())
            for frame in frames:
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        finally:
            proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.wait() != 0:
            raise PipelineError(f"{path}: ffmpeg failed to encode: {err.strip()[-300:]}")


class VideoWriter:
    """Stream RGB uint8 frames [H,W,3] into a browser-playable MP4, atomically; memory flat in length.

    H.264, yuv420p (odd sizes padded to even), ``fps`` constant, ``+faststart`` (the index first, so a
    browser plays while downloading), and the first audio stream of ``audio`` (any media file) muxed as AAC.
    The audio is not cut: a video of ceil(duration * fps) frames ends less than one frame after it.
    Use as a context manager; ``path`` appears only when the block and ffmpeg both succeed.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float = 25.0,
                 audio: str | Path | None = None, crf: int = 18, preset: str = "veryfast"):
        self.path, self.width, self.height = Path(path), width, height
        self.fps, self.audio, self.crf, self.preset = fps, audio, crf, preset
        self.frames = 0

    def __enter__(self) -> "VideoWriter":
        import contextlib
        import tempfile

        from pipeline.io import atomic_path

        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        # ffmpeg's messages go to a file: a pipe nobody reads while frames stream could fill and block it
        self._log = self._stack.enter_context(tempfile.TemporaryFile())
        cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{self.width}x{self.height}", "-r", str(self.fps), "-i", "-"]
        if self.audio is not None:
            cmd += ["-i", str(self.audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
        cmd += ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-movflags", "+faststart", "-f", "mp4", str(tmp)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=self._log)
        return self

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"{self.path}: frames must be uint8 [{self.height}, {self.width}, 3], got "
                             f"{frame.dtype} {list(frame.shape)}")
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            self._fail()
        self.frames += 1

    def _fail(self) -> None:
        self._proc.wait()
        self._log.seek(0)
        tail = self._log.read().decode(errors="replace").strip().splitlines()[-3:]
        raise PipelineError(f"{self.path}: ffmpeg failed to encode: {' | '.join(tail)}")

    def _finish(self) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        if self._proc.wait() != 0:
            self._fail()
        if self.frames == 0:
            raise PipelineError(f"{self.path}: no frames to encode")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # the block failed: stop ffmpeg, drop the temporary, let the error through
            self._proc.kill()
            self._proc.wait()
            self._stack.__exit__(exc_type, exc, tb)
            return
        try:
            self._finish()
        except BaseException as err:
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        self._stack.__exit__(None, None, None)

"""ffmpeg access: choosing and checking the binary, probing files, streaming frames and decoding audio.

One decided ffmpeg for every machine: by default the binary shipped inside the ``imageio-ffmpeg`` wheel
(``bundled``), whatever ffmpeg the system has, so the same input gives the same frames everywhere. The
environment variable ``PIPELINE_FFMPEG`` (which the workflow sets from the config key ``ffmpeg.binary``)
chooses another: ``system`` (the ``ffmpeg`` on PATH) or a path. Whichever is chosen is checked once per
process: version at least ``MIN_VERSION`` and the encoders and filters the pipeline uses, or a PipelineError
naming what is missing. ffprobe is not assumed: probing parses ``ffmpeg -i`` output and packet listings,
which every ffmpeg build provides.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.io import PipelineError

log = logging.getLogger(__name__)

ENV_VAR = "PIPELINE_FFMPEG"
BUNDLED = "bundled"
SYSTEM = "system"
# The oldest release the test suite runs against (Debian 12's); older ones (Ubuntu 22.04's 4.4) are untested.
MIN_VERSION = (5, 1)
REQUIRED_ENCODERS = ("libx264", "aac", "mjpeg", "pcm_s16le", "rawvideo")
REQUIRED_FILTERS = ("fps", "crop", "scale", "pad", "tpad", "apad", "atrim", "setpts", "adelay")


def ffmpeg_binary() -> str:
    """The checked ffmpeg executable chosen by ``$PIPELINE_FFMPEG`` (default ``bundled``)."""
    return checked_ffmpeg(os.environ.get(ENV_VAR) or BUNDLED)


@functools.lru_cache(maxsize=None)
def checked_ffmpeg(choice: str) -> str:
    """Resolve ``choice`` (``bundled``, ``system`` or a path/name) and check it; the executable's path."""
    exe = resolve_ffmpeg(choice)
    check_ffmpeg(exe)
    return exe


def resolve_ffmpeg(choice: str) -> str:
    if choice == BUNDLED:
        try:
            import imageio_ffmpeg
        except ImportError as err:  # pragma: no cover - imageio-ffmpeg is a required dependency
            raise PipelineError("ffmpeg: `bundled` needs the imageio-ffmpeg package, which is not installed") from err
        shipped = sorted((Path(imageio_ffmpeg.__file__).parent / "binaries").glob("ffmpeg-*"))
        # a wheel ships one binary; without one (conda's imageio-ffmpeg) it names the ffmpeg it uses
        return str(shipped[0]) if shipped else imageio_ffmpeg.get_ffmpeg_exe()
    found = shutil.which("ffmpeg" if choice == SYSTEM else choice)
    if found is None:
        what = "no ffmpeg on PATH" if choice == SYSTEM else f"{choice!r} is not an executable"
        raise PipelineError(f"ffmpeg: {what} (set ffmpeg.binary or ${ENV_VAR} to `bundled`, `system` or a path)")
    return found


def _ffmpeg_lines(exe: str, *args: str) -> list[str]:
    try:
        proc = subprocess.run([exe, "-hide_banner", "-nostdin", *args], capture_output=True, text=True,
                              errors="replace", timeout=60)
    except OSError as err:
        raise PipelineError(f"ffmpeg: {exe} does not run ({err})") from err
    if proc.returncode != 0:
        raise PipelineError(f"ffmpeg: `{exe} {' '.join(args)}` failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout.splitlines()


def ffmpeg_version(exe: str) -> str:
    """The version string of ``ffmpeg -version`` (``5.1.9-0+deb12u1``, ``n9.0.2-17-g...``, ``N-1234-g...``)."""
    first = (_ffmpeg_lines(exe, "-version") or [""])[0]
    m = re.match(r"ffmpeg version (\S+)", first)
    if m is None:
        raise PipelineError(f"ffmpeg: {exe} is not ffmpeg (its -version says {first!r})")
    return m[1]


def check_ffmpeg(exe: str) -> None:
    """PipelineError naming what ``exe`` lacks: a release older than MIN_VERSION, encoders or filters."""
    version = ffmpeg_version(exe)
    problems = []
    if m := re.match(r"n?(\d+)\.(\d+)", version):
        if (int(m[1]), int(m[2])) < MIN_VERSION:
            problems.append(f"version {version} is older than {'.'.join(map(str, MIN_VERSION))}")
    elif not version.startswith("N-"):  # N-...: a development snapshot, newer than any release
        problems.append(f"version {version!r} is not a release number")
    for kind, needed in (("encoders", REQUIRED_ENCODERS), ("filters", REQUIRED_FILTERS)):
        # listing lines: flags, name, description (after a header that ends with a '------' line)
        names = {parts[1] for line in _ffmpeg_lines(exe, f"-{kind}") if len(parts := line.split()) >= 2}
        missing = [n for n in needed if n not in names]
        if missing:
            problems.append(f"no {kind} {', '.join(missing)}")
    if problems:
        raise PipelineError(f"ffmpeg: {exe} cannot run the pipeline: {'; '.join(problems)} (the bundled one "
                            f"can: set ffmpeg.binary or ${ENV_VAR} to `bundled`)")
    log.debug("ffmpeg %s at %s", version, exe)


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


@dataclass(frozen=True)
class VideoTiming:
    """Presentation times of the first video stream's frames, from its packets (no decoding).

    Unlike the container's duration (which a longer audio track extends, and which ffmpeg releases
    compute differently), these are the same with every ffmpeg.
    """

    start: float  # s, presentation time of the earliest frame
    end: float  # s, presentation time of the last frame plus its duration
    frames: int  # packets (coded frames) in the stream

    @property
    def duration(self) -> float:
        return self.end - self.start

    def frame_count(self, fps: float) -> int:
        """Frames at a constant ``fps`` covering the stream: round(duration x fps), halves up."""
        return int(math.floor(self.duration * fps + 0.5 + 1e-9))


_TIMEBASE = re.compile(r"^#tb 0: (\d+)/(\d+)", re.MULTILINE)
_NO_PTS = -(2**63)


def _frame_listing(path: Path, what: str, *args: str) -> tuple[float, np.ndarray]:
    """ffmpeg's framemd5 listing of the output ``args`` select: seconds per time-base unit and the timed
    rows' (pts, duration) [K, 2]. Timestamps are on ffmpeg's timeline, which starts at the container's
    start time, the same for every stream and for the frames and audio the pipeline decodes."""
    proc = subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(path), *args, "-f", "framemd5", "-"],
                          capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise PipelineError(f"{path}: ffmpeg could not list its {what}: {' | '.join(tail)}")
    if "partial file" in proc.stderr:  # the mov demuxer's words, in every release
        raise PipelineError(f"{path}: the file ends before its index says (truncated or corrupt)")
    tb = _TIMEBASE.search(proc.stdout)
    # lines: stream, dts, pts, duration, size, hash
    rows = [line.split(",") for line in proc.stdout.splitlines() if line and not line.startswith("#")]
    timed = np.array([(int(r[2]), int(r[3])) for r in rows if len(r) >= 4 and int(r[2]) != _NO_PTS],
                     dtype=np.int64).reshape(-1, 2)
    if tb is None or len(timed) == 0:
        raise PipelineError(f"{path}: its {what} have no timestamps")
    return int(tb[1]) / int(tb[2]), timed


def video_timing(path: str | Path) -> VideoTiming:
    """Start, end and frame count of the first video stream, from a packet listing (stream copy).

    PipelineError when the file ends before its index says (an MP4/MOV cut short)."""
    unit, packets = _frame_listing(Path(path), "video packets", "-map", "0:v:0", "-c", "copy")
    pts, duration = packets[:, 0], packets[:, 1]
    steps = np.diff(np.sort(pts))
    # containers that store no per-packet duration: the usual frame spacing stands in
    duration = np.where(duration > 0, duration, int(np.median(steps)) if len(steps) else 0)
    return VideoTiming(start=float(pts.min() * unit), end=float((pts + duration).max() * unit),
                       frames=len(packets))


def audio_start(path: str | Path) -> float:
    """Presentation time (s) of the first sample that decoding the first audio stream yields, on the timeline
    of ``video_timing``.

    From the first decoded frame, not the first packet: whether an AAC track's priming samples are dropped
    depends on the container's edit list, and a decode to wav starts with whatever the decoder yields."""
    unit, frames = _frame_listing(Path(path), "decoded audio", "-map", "0:a:0", "-frames:a", "1",
                                  "-c:a", "pcm_s16le")
    return float(frames[0, 0] * unit)


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

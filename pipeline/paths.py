"""The one place that names every artefact of a subject.

Snakemake rules and pipeline modules both build paths from here, so a layout change is one edit.
Layout (per subject, under ``{results}/{subject}/``) follows DESIGN.md section 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

def frame_name(index: int, ext: str) -> str:
    """File name of frame ``index`` (0-based) in a frame directory: 000123.ext."""
    return f"{index:06d}.{ext}"


@dataclass(frozen=True)
class SubjectPaths:
    """Artefact paths of one subject. ``root`` is ``{results}/{subject}``."""

    root: Path

    @classmethod
    def of(cls, results: str | Path, subject: str) -> "SubjectPaths":
        return cls(Path(results) / subject)

    # prepare_video
    @property
    def frames(self) -> Path:
        return self.root / "frames"

    @property
    def audio_wav(self) -> Path:
        return self.root / "audio.wav"

    @property
    def video_json(self) -> Path:
        return self.root / "video.json"

    # face analysis
    @property
    def landmarks(self) -> Path:
        return self.root / "landmarks.npy"

    @property
    def face_found(self) -> Path:
        return self.root / "face_found.npy"

    @property
    def parsing(self) -> Path:
        return self.root / "parsing"

    @property
    def mouth_masks(self) -> Path:
        return self.root / "mouth_masks"

    @property
    def background(self) -> Path:
        return self.root / "background.png"

    @property
    def head(self) -> Path:
        return self.root / "head"

    @property
    def torso(self) -> Path:
        return self.root / "torso"

    @property
    def blink(self) -> Path:
        return self.root / "blink.npy"

    # tracking
    @property
    def cameras(self) -> Path:
        return self.root / "cameras.json"

    # audio
    def audio_features(self, extractor: str) -> Path:
        return self.root / "audio_features" / f"{extractor}.npy"

    def audio_stats(self, extractor: str) -> Path:
        """Per-subject normalisation statistics, reused for every driving audio of the subject."""
        return self.root / "audio_features" / f"{extractor}_stats.npz"

    def drive_features(self, audio_id: str, extractor: str) -> Path:
        return self.root / "drives" / audio_id / f"{extractor}.npy"

    def drive_audio(self, audio_id: str) -> Path:
        return self.root / "drives" / audio_id / "audio.wav"

    # quality control pictures
    @property
    def qc(self) -> Path:
        return self.root / "qc"

    def qc_image(self, stage: str) -> Path:
        return self.qc / f"{stage}.png"

    # training / rendering / evaluation (DESIGN sections 3, 5, 7)
    @property
    def coarse_ply(self) -> Path:
        return self.root / "gaussians" / "coarse.ply"

    @property
    def coarse_pt(self) -> Path:
        return self.root / "gaussians" / "coarse.pt"

    @property
    def coarse_log(self) -> Path:
        return self.root / "gaussians" / "train_log.csv"

    @property
    def fine_pt(self) -> Path:
        return self.root / "model" / "fine.pt"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, stage: str) -> Path:
        """Resume file of a training stage (not a rule output: it must outlive a failed job)."""
        return self.checkpoints / f"{stage}.pt"

    @property
    def fine_log(self) -> Path:
        return self.root / "model" / "train_log.csv"

    def render(self, audio_id: str) -> Path:
        return self.root / "renders" / f"{audio_id}.mp4"

    @property
    def metrics(self) -> Path:
        return self.root / "eval" / "metrics.json"

    @property
    def side_by_side(self) -> Path:
        return self.root / "eval" / "side_by_side.mp4"

    # Snakemake report pages (rule report_pages)
    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def report_figure(self, name: str) -> Path:
        """Plotted curves for the report: ``losses``, ``poses``."""
        return self.report_dir / f"{name}.png"

    @property
    def report_renders(self) -> Path:
        """HTML page with the metrics table and every render playing inline (self-contained)."""
        return self.report_dir / "renders.html"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, rule: str) -> Path:
        return self.logs / f"{rule}.log"

    def benchmark(self, rule: str) -> Path:
        return self.logs / f"{rule}.benchmark.tsv"

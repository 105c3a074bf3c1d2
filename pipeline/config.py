"""Configuration: validation against the JSON schemas (filling defaults), sample sheets, presets.

The Snakefile calls :func:`load` once; everything it returns is plain data, so rules only read it.
Precedence for a subject's settings: its sheet columns, then its preset, then ``config.yaml``.
"""

from __future__ import annotations

import copy
import csv
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pipeline.io import PipelineError

SCHEMAS = Path(__file__).resolve().parents[1] / "workflow" / "schemas"
RESERVED_AUDIO_IDS = {"test"}  # renders/test.mp4 is the test split


@dataclass(frozen=True)
class Subject:
    name: str
    video: str
    preset: str  # resolved: "default" or "cpu"
    resolution: int
    extractor: str  # audio features the subject trains and renders with (sheet column, else audio.extractor)


@dataclass(frozen=True)
class Drive:
    subject: str
    audio_id: str
    audio: str


@dataclass(frozen=True)
class Settings:
    config: dict[str, Any]
    subjects: dict[str, Subject]
    drives: list[Drive]


def _schema(name: str) -> dict:
    return yaml.safe_load((SCHEMAS / f"{name}.schema.yaml").read_text())


def _with_defaults(validator_class):
    """A validator that fills ``default`` values of absent properties before validating them."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def fill(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": fill})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def validate(data: dict, schema_name: str, where: str) -> dict:
    """Validated deep copy of ``data`` with defaults filled; PipelineError lists every problem."""
    data = copy.deepcopy(data)
    errors = sorted(_Validator(_schema(schema_name)).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        lines = []
        for err in errors:
            key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"  {key}: {err.message}")
        raise PipelineError(f"{where}: invalid configuration\n" + "\n".join(lines))
    return data


def read_sheet(path: Path) -> list[dict[str, Any]]:
    """Rows of a TSV sheet; empty cells are dropped, integer-looking cells become ints."""
    if not path.is_file():
        raise PipelineError(f"{path}: sheet not found")
    with path.open(newline="") as fh:
        lines = [line for line in fh if line.strip() and not line.lstrip().startswith("#")]
    rows = []
    for raw in csv.DictReader(lines, delimiter="\t"):
        if None in raw:
            raise PipelineError(f"{path}: a row has more cells than the header ({raw[None]})")
        row: dict[str, Any] = {}
        for key, value in raw.items():
            value = (value or "").strip()
            if value:
                row[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
        rows.append(row)
    return rows


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_preset(name: str) -> str:
    if name == "auto":
        return "default" if cuda_available() else "cpu"
    return name


def subject_settings(config: dict, row: dict) -> Subject:
    preset = resolve_preset(row.get("preset") or config["preset"])
    overrides = config["presets"].get(preset, {})
    resolution = row.get("resolution") or overrides.get("resolution") or config["prepare"]["resolution"]
    return Subject(name=row["subject"], video=row["video"], preset=preset, resolution=int(resolution),
                   extractor=row.get("extractor") or config["audio"]["extractor"])


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def stage_settings(config: dict, preset: str, section: str) -> dict:
    """Section ``section`` of a validated ``config`` with preset ``preset``'s overrides merged in, validated."""
    override = config["presets"].get(preset, {}).get(section, {})
    merged = _deep_merge(config[section], override)
    return validate({section: merged}, "config", f"config presets.{preset}.{section}")[section]


def drive_id(audio: str) -> str:
    """The audio id of a driving file given on the command line (``--config drive=...``): its file stem."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(audio).stem).lstrip("_.-") or "drive"
    if stem in RESERVED_AUDIO_IDS:
        raise PipelineError(f"config drive={audio}: its name {stem!r} is reserved (renders/{stem}.mp4); rename it")
    return stem


def load(config: dict) -> Settings:
    """Validate ``config`` (Snakemake's dict) and read the sheets it names."""
    config = validate(config, "config", "config")
    if (config["video"] is None) != (config["subject"] is None):
        raise PipelineError("config: give both `video` and `subject` (--config video=clip.mp4 subject=name)")
    if config["video"] is not None:
        rows = [{"subject": config["subject"], "video": config["video"]}]
    else:
        rows = read_sheet(Path(config["subjects"]))
    subjects: dict[str, Subject] = {}
    for i, row in enumerate(rows, start=2):
        row = validate(row, "subjects", f"{config['subjects']} line {i}")
        if row["subject"] in subjects:
            raise PipelineError(f"{config['subjects']}: subject {row['subject']!r} appears twice")
        subjects[row["subject"]] = subject_settings(config, row)
    drives = []
    drive_path = Path(config["drives"])
    for i, row in enumerate(read_sheet(drive_path) if drive_path.is_file() else [], start=2):
        row = validate(row, "drives", f"{drive_path} line {i}")
        if row["subject"] not in subjects:
            if config["video"] is not None:
                continue  # a single-subject run ignores the other subjects' drives
            raise PipelineError(f"{drive_path} line {i}: subject {row['subject']!r} is not in "
                                f"{config['subjects']} (known: {', '.join(sorted(subjects))})")
        drives.append(Drive(**row))
    if config["drive"] is not None:
        drives += [Drive(name, drive_id(config["drive"]), config["drive"]) for name in subjects]
    return Settings(config=config, subjects=subjects, drives=drives)

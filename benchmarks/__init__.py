"""Benchmarks: see BENCHMARKS.md for their figures."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def preset_settings(preset: str, section: str) -> dict:
    """Section ``section`` of config/config.yaml with preset ``preset`` merged in, as the workflow reads it."""
    from pipeline import config

    validated = config.validate(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), "config",
                                "config/config.yaml")
    return config.stage_settings(validated, preset, section)

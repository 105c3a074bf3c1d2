"""environment.yml and envs/*.yaml stay consistent with pyproject.toml (the tested, pip install path)."""

from __future__ import annotations

import re
import tomllib

import yaml

CONDA_TO_PIP = {"pysoundfile": "soundfile", "python-isal": "isal"}
NOT_PYTHON_PACKAGES = {"python", "pip", "ffmpeg"}


def _split(spec: str) -> tuple[str, str]:
    """'Name >=1,<2' -> ('name', '>=1,<2')."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    assert m, spec
    return m[1].lower().replace("_", "-"), m[2].replace(" ", "")


def _pyproject(repo) -> dict[str, str]:
    data = tomllib.loads((repo / "pyproject.toml").read_text())
    deps = list(data["project"]["dependencies"])
    for extra in data["project"]["optional-dependencies"].values():
        deps += extra
    return dict(_split(d) for d in deps)


def _conda_specs(path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    specs = {}
    for dep in env["dependencies"]:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            if item.startswith("-"):  # pip options such as `-e .`
                continue
            name, pin = _split(item)
            specs[CONDA_TO_PIP.get(name, name)] = pin
    return specs


def test_env_files_match_pyproject(repo):
    pyproject = _pyproject(repo)
    files = [repo / "environment.yml", *sorted((repo / "envs").glob("*.yaml"))]
    assert len(files) >= 2
    for path in files:
        for name, pin in _conda_specs(path).items():
            if name in NOT_PYTHON_PACKAGES:
                continue
            assert name in pyproject, f"{path.name}: {name} is not a dependency in pyproject.toml"
            if name == "torch":
                assert pin == "==2.13.0", f"{path.name}: torch must be pinned to the CPU-tested 2.13.0"
            else:
                assert pin == pyproject[name], f"{path.name}: {name}{pin} differs from pyproject {pyproject[name]}"


def test_environment_yml_covers_every_required_dependency(repo):
    required = {_split(d)[0] for d in tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert required <= set(_conda_specs(repo / "environment.yml"))


def test_every_rule_env_exists(repo):
    for smk in (repo / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: missing {env}"

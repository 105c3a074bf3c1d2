# Configuration, sample sheets, wildcard constraints and input functions shared by every rule.
import glob
import json
import os
import sys

from snakemake.exceptions import WorkflowError

import shlex

from snakemake.settings.types import DeploymentMethod

# Rules run `$PY -m pipeline.<stage>` from this checkout, whether or not the package is installed: $PY is
# the interpreter that runs Snakemake, or the conda env's python under --use-conda.
sys.path.insert(0, workflow.basedir)
_python = (
    "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else shlex.quote(sys.executable)
)

from pipeline import config as pipeline_config
from pipeline import media
from pipeline.io import PipelineError
from pipeline.paths import SubjectPaths

try:
    SETTINGS = pipeline_config.load(config)
except PipelineError as err:
    raise WorkflowError(str(err)) from None
config.update(SETTINGS.config)
# One ffmpeg for every job, checked before any job starts; $PIPELINE_FFMPEG takes precedence over the config.
FFMPEG = os.environ.get(media.ENV_VAR) or config["ffmpeg"]["binary"]
try:
    media.checked_ffmpeg(FFMPEG)
except PipelineError as err:
    raise WorkflowError(str(err)) from None
shell.prefix(
    f"export PYTHONPATH={shlex.quote(workflow.basedir)}:$PYTHONPATH {media.ENV_VAR}={shlex.quote(FFMPEG)}; "
    f"PY={_python}; "
)
SUBJECTS = SETTINGS.subjects
DRIVES = SETTINGS.drives
P = SubjectPaths.of(config["results"], "{subject}")  # artefact paths with the subject wildcard
DEMO = "resources/demo"


wildcard_constraints:
    subject=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    audio_id=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    extractor=r"mel|whisper|ppg|hubert|wav2vec2",


def code(*modules):
    """The stage's module files: inputs, so editing the code reruns the stage (checksum trigger).
    `package/*` stands for every module of a subpackage (e.g. the rasterizer for training)."""
    paths = []
    for module in modules:
        path = os.path.join(workflow.basedir, "pipeline", f"{module}.py")
        paths += sorted(glob.glob(path)) if "*" in module else [path]
    paths = [os.path.relpath(p) for p in paths]
    return paths[0] if len(paths) == 1 else paths


def subject_video(wildcards):
    return SUBJECTS[wildcards.subject].video


def subject_resolution(wildcards):
    return SUBJECTS[wildcards.subject].resolution


def drive_audio(wildcards):
    for drive in DRIVES:
        if (drive.subject, drive.audio_id) == (wildcards.subject, wildcards.audio_id):
            return drive.audio
    raise WorkflowError(f"no row for subject {wildcards.subject}, audio_id {wildcards.audio_id} in {config['drives']}")


def optional_arg(flag, value):
    """`--flag value` for a set option, nothing for an unset (null) one."""
    return f"{flag} {shlex.quote(str(value))}" if value is not None else ""


def model_path_arg(wildcards):
    return optional_arg("--model-path", config["audio"]["model_path"])


def stage_settings_json(wildcards, section):
    """The subject's `section` settings (config + its preset's overrides) as JSON for the stage's CLI."""
    preset = SUBJECTS[wildcards.subject].preset
    return json.dumps(pipeline_config.stage_settings(config, preset, section), sort_keys=True)


def training_gpus(wildcards):
    """GPU rules ask for one GPU with the full-settings preset, none with the cpu preset."""
    return 1 if SUBJECTS[wildcards.subject].preset == "default" else 0


# Driving audio of one subject, for render.smk's evaluate and report_pages rules.
def subject_drives(wildcards):
    return [drive for drive in DRIVES if drive.subject == wildcards.subject]


def drive_renders(wildcards):
    return [str(P.render(drive.audio_id)).format(subject=wildcards.subject) for drive in subject_drives(wildcards)]


def drive_audios(wildcards):
    return [drive.audio for drive in subject_drives(wildcards)]


def evaluate_drive_args(wildcards):
    return " ".join(
        f"--drive {drive.audio_id} {shlex.quote(str(P.render(drive.audio_id)).format(subject=wildcards.subject))}"
        f" {shlex.quote(drive.audio)}"
        for drive in subject_drives(wildcards)
    )


def report_video_args(wildcards):
    videos = [("test split", P.render("test")), ("real | render | error", P.side_by_side)]
    videos += [(drive.audio_id, P.render(drive.audio_id)) for drive in subject_drives(wildcards)]
    return " ".join(f"--video {shlex.quote(name)} {shlex.quote(str(path).format(subject=wildcards.subject))}"
                    for name, path in videos)


# The subject's audio extractor (its sheet column, else audio.extractor) and the files named by it.
def subject_extractor(wildcards):
    return SUBJECTS[wildcards.subject].extractor


def subject_features(wildcards):
    return str(P.audio_features(subject_extractor(wildcards))).format(subject=wildcards.subject)


def subject_stats(wildcards):
    return str(P.audio_stats(subject_extractor(wildcards))).format(subject=wildcards.subject)


def drive_features(wildcards):
    path = P.drive_features(wildcards.audio_id, subject_extractor(wildcards))
    return str(path).format(subject=wildcards.subject)


def final_outputs(wildcards):
    """Every artefact the built stages produce, for every subject and driving audio."""
    outputs = []
    for name, subject in SUBJECTS.items():
        paths = SubjectPaths.of(config["results"], name)
        outputs += [paths.frames, paths.audio_wav, paths.video_json, paths.audio_features(subject.extractor)]
        outputs += [paths.landmarks, paths.cameras, paths.qc_image("tracking")]
        outputs += [paths.mouth_masks, paths.head, paths.torso, paths.blink, paths.qc_image("face_analysis")]
        outputs += [paths.coarse_ply, paths.coarse_pt, paths.qc_image("coarse")]
        outputs += [paths.fine_pt, paths.qc_image("fine"), paths.render("test"), paths.metrics, paths.side_by_side]
        outputs += [paths.report_figure("losses"), paths.report_figure("poses"), paths.report_renders]
    for drive in DRIVES:
        paths = SubjectPaths.of(config["results"], drive.subject)
        extractor = SUBJECTS[drive.subject].extractor
        outputs += [paths.drive_features(drive.audio_id, extractor), paths.render(drive.audio_id)]
    return outputs

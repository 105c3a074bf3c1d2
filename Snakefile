# Audio-Plane talking-head pipeline. Usage: README.md; stages and artefacts: DESIGN (workflow/rules/*).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/audio.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/face.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/render.smk"


rule all:
    input:
        final_outputs,
    default_target: True

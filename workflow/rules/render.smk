# render, evaluate and the report pages (DESIGN sections 2, 5, 7), from model/fine.pt of train_fine.


report: "../report/workflow.rst"


RENDER_INPUTS = dict(
    model=P.fine_pt,
    cameras=P.cameras,
    torso=P.torso,
    frames=P.frames,
    parsing=P.parsing,
    background=P.background,
    blink=P.blink,
    meta=P.video_json,
    code=code("render", "composite"),
)


rule render:
    wildcard_constraints:
        # renders/test.mp4 is render_test's (the lookahead sees the rest of the path, hence the extension)
        audio_id=r"(?!test\.mp4$)[A-Za-z0-9][A-Za-z0-9_.-]*",
    input:
        **RENDER_INPUTS,
        features=drive_features,
        audio=drive_audio,
        source=subject_video,
    output:
        video=P.render("{audio_id}"),
    params:
        subject_dir=lambda wildcards, input: os.path.dirname(input.cameras),
        settings=lambda wildcards: stage_settings_json(wildcards, "render"),
        device=config["training"]["device"],
    log:
        P.log("render_{audio_id}"),
    benchmark:
        P.benchmark("render_{audio_id}")
    threads: config["training"]["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=training_gpus,
    conda:
        "../../envs/train.yaml"
    shell:
        "$PY -m pipeline.render --subject-dir {params.subject_dir:q} --audio {input.audio:q}"
        " --features {input.features:q} --out {output.video:q} --settings {params.settings:q}"
        " --device {params.device} --threads {threads} > {log:q} 2>&1"


rule render_test:
    input:
        **RENDER_INPUTS,
        features=subject_features,
        audio=P.audio_wav,
    output:
        video=P.render("test"),
    params:
        subject_dir=lambda wildcards, input: os.path.dirname(input.cameras),
        settings=lambda wildcards: stage_settings_json(wildcards, "render"),
        device=config["training"]["device"],
    log:
        P.log("render_test"),
    benchmark:
        P.benchmark("render_test")
    threads: config["training"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=training_gpus,
    conda:
        "../../envs/train.yaml"
    shell:
        "$PY -m pipeline.render --subject-dir {params.subject_dir:q} --test"
        " --out {output.video:q} --settings {params.settings:q} --device {params.device} --threads {threads}"
        " > {log:q} 2>&1"


rule evaluate:
    input:
        test=P.render("test"),
        frames=P.frames,
        cameras=P.cameras,
        landmarks=P.landmarks,
        mouth_masks=P.mouth_masks,
        renders=drive_renders,
        audio=drive_audios,
        code=code("evaluate"),
    output:
        metrics=P.metrics,
        side_by_side=P.side_by_side,
    params:
        drives=evaluate_drive_args,
    log:
        P.log("evaluate"),
    benchmark:
        P.benchmark("evaluate")
    threads: 2
    resources:
        mem_mb=3000,
        runtime=60,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.evaluate --test-video {input.test:q} --frames {input.frames:q} --cameras {input.cameras:q}"
        " --landmarks {input.landmarks:q} --mouth-masks {input.mouth_masks:q} {params.drives} --out {output.metrics:q}"
        " --side-by-side {output.side_by_side:q} > {log:q} 2>&1"


rule report_pages:
    input:
        coarse_log=P.coarse_log,
        fine_log=P.fine_log,
        cameras=P.cameras,
        metrics=P.metrics,
        side_by_side=P.side_by_side,
        test=P.render("test"),
        renders=drive_renders,
        code=code("report"),
    output:
        losses=report(P.report_figure("losses"), caption="../report/losses.rst", category="Training",
                      subcategory="{subject}"),
        poses=report(P.report_figure("poses"), caption="../report/poses.rst", category="Tracking",
                     subcategory="{subject}"),
        renders=report(P.report_renders, caption="../report/renders.rst", category="Renders",
                       subcategory="{subject}"),
    params:
        videos=report_video_args,
    log:
        P.log("report_pages"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.report --subject {wildcards.subject} --log coarse {input.coarse_log:q}"
        " --log fine {input.fine_log:q} --cameras {input.cameras:q} --metrics {input.metrics:q} {params.videos}"
        " --losses-out {output.losses:q} --poses-out {output.poses:q} --renders-out {output.renders:q}"
        " > {log:q} 2>&1"

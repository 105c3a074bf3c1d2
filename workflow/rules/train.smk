# Gaussian training (DESIGN.md section 3): train_coarse fits static head Gaussians in the canonical head frame.


rule train_coarse:
    input:
        head=P.head,
        background=P.background,
        cameras=P.cameras,
        code=code("train", "dataset", "losses", "lpips", "checkpoint", "gaussians/*"),
    output:
        ply=P.coarse_ply,
        pt=P.coarse_pt,
        train_log=P.coarse_log,
        qc=report(P.qc_image("coarse"), caption="../report/qc_coarse.rst", category="Quality control",
                   subcategory="{subject}"),
    params:
        settings=lambda wildcards: stage_settings_json(wildcards, "coarse"),
        checkpoint=lambda wildcards: SubjectPaths.of(config["results"], wildcards.subject).checkpoint("coarse"),
        device=config["training"]["device"],
        backend=config["training"]["backend"],
    log:
        P.log("train_coarse"),
    benchmark:
        P.benchmark("train_coarse")
    threads: config["training"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=training_gpus,
    conda:
        "../../envs/train.yaml"
    shell:
        "$PY -m pipeline.train coarse --head {input.head:q} --background {input.background:q}"
        " --cameras {input.cameras:q} --settings {params.settings:q} --out-ply {output.ply:q}"
        " --out-pt {output.pt:q} --log-csv {output.train_log:q} --qc {output.qc:q}"
        " --checkpoint {params.checkpoint:q} --device {params.device} --backend {params.backend}"
        " --threads {threads} > {log:q} 2>&1"


rule train_fine:
    input:
        coarse=P.coarse_pt,
        head=P.head,
        background=P.background,
        cameras=P.cameras,
        masks=P.mouth_masks,
        parsing=P.parsing,
        landmarks=P.landmarks,
        blink=P.blink,
        features=subject_features,
        stats=subject_stats,
        code=code("fine", "audioplane", "train", "dataset", "losses", "lpips", "checkpoint", "split", "landmarks",
                  "background", "gaussians/*"),
    output:
        model=P.fine_pt,
        train_log=P.fine_log,
        qc=P.qc_image("fine"),
    params:
        settings=lambda wildcards: stage_settings_json(wildcards, "fine"),
        checkpoint=lambda wildcards: SubjectPaths.of(config["results"], wildcards.subject).checkpoint("fine"),
        extractor=subject_extractor,
        device=config["training"]["device"],
        backend=config["training"]["backend"],
    log:
        P.log("train_fine"),
    benchmark:
        P.benchmark("train_fine")
    threads: config["training"]["threads"]
    resources:
        mem_mb=8000,
        runtime=1440,
        gpu=training_gpus,
    conda:
        "../../envs/train.yaml"
    shell:
        "$PY -m pipeline.fine --coarse {input.coarse:q} --head {input.head:q} --background {input.background:q}"
        " --cameras {input.cameras:q} --masks {input.masks:q} --parsing {input.parsing:q}"
        " --landmarks {input.landmarks:q} --blink {input.blink:q} --features {input.features:q}"
        " --stats {input.stats:q} --extractor {params.extractor}"
        " --settings {params.settings:q} --out {output.model:q} --log-csv {output.train_log:q} --qc {output.qc:q}"
        " --checkpoint {params.checkpoint:q} --device {params.device} --backend {params.backend}"
        " --threads {threads} > {log:q} 2>&1"

# Face analysis after landmarks: parsing label maps, dilated mouth masks, background plate, head/torso split.


rule parse_faces:
    input:
        frames=P.frames,
        landmarks=P.landmarks,
        code=code("parsing"),
    output:
        parsing=directory(P.parsing),
    params:
        selfie_model=config["parsing"]["selfie_model"],
        threshold=config["parsing"]["person_threshold"],
    log:
        P.log("parse_faces"),
    benchmark:
        P.benchmark("parse_faces")
    threads: 2
    resources:
        mem_mb=1000,
        runtime=60,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.parsing --frames {input.frames:q} --landmarks {input.landmarks:q} --out {output.parsing:q}"
        " --selfie-model {params.selfie_model} --person-threshold {params.threshold} --threads {threads}"
        " > {log:q} 2>&1"


rule dilate_mouth_masks:
    input:
        parsing=P.parsing,
        landmarks=P.landmarks,
        code=code("masks"),
    output:
        masks=directory(P.mouth_masks),
    params:
        dilation=config["masks"]["dilation"],
    log:
        P.log("dilate_mouth_masks"),
    benchmark:
        P.benchmark("dilate_mouth_masks")
    threads: 2
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.masks --parsing {input.parsing:q} --landmarks {input.landmarks:q} --out {output.masks:q}"
        " --dilation {params.dilation} --threads {threads} > {log:q} 2>&1"


rule extract_background:
    input:
        frames=P.frames,
        parsing=P.parsing,
        code=code("background"),
    output:
        plate=P.background,
    params:
        max_samples=config["background"]["max_samples"],
        margin=config["background"]["margin"],
        min_seen=config["background"]["min_seen"],
        tolerance=config["background"]["tolerance"],
    log:
        P.log("extract_background"),
    benchmark:
        P.benchmark("extract_background")
    threads: 2
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.background plate --frames {input.frames:q} --parsing {input.parsing:q}"
        " --out {output.plate:q} --max-samples {params.max_samples} --margin {params.margin}"
        " --min-seen {params.min_seen} --tolerance {params.tolerance} --threads {threads} > {log:q} 2>&1"


rule split_head_torso:
    input:
        frames=P.frames,
        parsing=P.parsing,
        plate=P.background,
        landmarks=P.landmarks,
        masks=P.mouth_masks,
        code=code("background"),
    output:
        head=directory(P.head),
        torso=directory(P.torso),
        blink=P.blink,
        qc=report(P.qc_image("face_analysis"), caption="../report/qc_face_analysis.rst", category="Quality control",
                   subcategory="{subject}"),
    params:
        feather=config["background"]["feather"],
    log:
        P.log("split_head_torso"),
    benchmark:
        P.benchmark("split_head_torso")
    threads: 2
    resources:
        mem_mb=1000,
        runtime=60,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.background split --frames {input.frames:q} --parsing {input.parsing:q}"
        " --background {input.plate:q} --landmarks {input.landmarks:q} --mouth-masks {input.masks:q}"
        " --head-out {output.head:q} --torso-out {output.torso:q} --blink-out {output.blink:q} --qc {output.qc:q}"
        " --feather {params.feather} --threads {threads} > {log:q} 2>&1"

# detect_landmarks (MediaPipe face mesh) and track_head_pose (cameras for every frame).


rule detect_landmarks:
    input:
        frames=P.frames,
        meta=P.video_json,
        code=code("landmarks"),
    output:
        landmarks=P.landmarks,
        found=P.face_found,
    params:
        backend=config["landmarks"]["backend"],
        max_faces=config["landmarks"]["max_faces"],
        max_gap=config["landmarks"]["max_gap"],
        max_missing=config["landmarks"]["max_missing_fraction"],
        weights=optional_arg("--face-alignment-weights", config["landmarks"]["face_alignment_weights"]),
    log:
        P.log("detect_landmarks"),
    benchmark:
        P.benchmark("detect_landmarks")
    threads: 2
    resources:
        mem_mb=1500,
        runtime=60,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.landmarks --frames {input.frames:q} --video-json {input.meta:q} --out {output.landmarks:q}"
        " --face-found {output.found:q} --backend {params.backend} --max-faces {params.max_faces}"
        " --max-gap {params.max_gap} --max-missing-fraction {params.max_missing} {params.weights}"
        " > {log:q} 2>&1"


rule track_head_pose:
    input:
        landmarks=P.landmarks,
        meta=P.video_json,
        frames=P.frames,
        code=code("tracking"),
    output:
        cameras=P.cameras,
        qc=report(P.qc_image("tracking"), caption="../report/qc_tracking.rst", category="Quality control",
                   subcategory="{subject}"),
    params:
        smoothing=config["tracking"]["smoothing"],
        iterations=config["tracking"]["iterations"],
        eye_distance=config["tracking"]["eye_distance"],
    log:
        P.log("track_head_pose"),
    benchmark:
        P.benchmark("track_head_pose")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.tracking --landmarks {input.landmarks:q} --video-json {input.meta:q} --frames {input.frames:q}"
        " --out {output.cameras:q} --qc {output.qc:q} --smoothing {params.smoothing}"
        " --iterations {params.iterations} --eye-distance {params.eye_distance} --threads {threads}"
        " > {log:q} 2>&1"

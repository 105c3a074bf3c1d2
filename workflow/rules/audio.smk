# extract_audio_features: per-frame audio windows for the subject, and the same for each driving audio
# (normalised with the subject's statistics). Files are named by extractor, so switching it reruns only
# what depends on it.


rule extract_audio_features:
    input:
        audio=P.audio_wav,
        meta=P.video_json,
        code=code("audio"),
    output:
        features=P.audio_features("{extractor}"),
        stats=P.audio_stats("{extractor}"),
    params:
        window=config["audio"]["window"],
        n_mels=config["audio"]["n_mels"],
        model=model_path_arg,
    log:
        P.log("extract_audio_features_{extractor}"),
    benchmark:
        P.benchmark("extract_audio_features_{extractor}")
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.audio --audio {input.audio:q} --video-json {input.meta:q} --extractor {wildcards.extractor}"
        " --window {params.window} --n-mels {params.n_mels} {params.model} --out {output.features:q}"
        " --stats-out {output.stats:q} --threads {threads} > {log:q} 2>&1"


rule extract_drive_features:
    input:
        audio=drive_audio,
        stats=P.audio_stats("{extractor}"),
        code=code("audio"),
    output:
        features=P.drive_features("{audio_id}", "{extractor}"),
    params:
        window=config["audio"]["window"],
        n_mels=config["audio"]["n_mels"],
        model=model_path_arg,
        wav=lambda wildcards, output: os.path.join(os.path.dirname(output.features), "audio.wav"),
    log:
        P.log("extract_drive_features_{audio_id}_{extractor}"),
    benchmark:
        P.benchmark("extract_drive_features_{audio_id}_{extractor}")
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.audio --audio {input.audio:q} --stats-in {input.stats:q} --extractor {wildcards.extractor}"
        " --window {params.window} --n-mels {params.n_mels} {params.model} --out {output.features:q}"
        " --wav-out {params.wav:q} --threads {threads} > {log:q} 2>&1"

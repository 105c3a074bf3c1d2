# prepare_video: 25 fps square head crops, 16 kHz mono audio and video.json.


rule prepare_video:
    input:
        video=subject_video,
        code=code("video"),
    output:
        frames=directory(P.frames),
        audio=P.audio_wav,
        meta=P.video_json,
    params:
        resolution=subject_resolution,
        crop_scale=config["prepare"]["crop_scale"],
        min_duration=config["prepare"]["min_duration"],
    log:
        P.log("prepare_video"),
    benchmark:
        P.benchmark("prepare_video")
    threads: 2
    resources:
        mem_mb=1000,
        runtime=60,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.video --video {input.video:q} --frames {output.frames:q} --audio {output.audio:q}"
        " --json {output.meta:q} --resolution {params.resolution} --crop-scale {params.crop_scale}"
        " --min-duration {params.min_duration} > {log:q} 2>&1"

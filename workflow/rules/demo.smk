# The embedded demo subject: generated deterministically from scikit-image's astronaut photograph.


rule make_demo:
    input:
        code=code("demo"),
    output:
        video=f"{DEMO}/video.mp4",
        audio=f"{DEMO}/audio.wav",
        drive=f"{DEMO}/drive.wav",
        truth=f"{DEMO}/ground_truth.npz",
    params:
        out=lambda wildcards, output: os.path.dirname(output.video),
        duration=config["demo"]["duration"],
        size=config["demo"]["size"],
        seed=config["demo"]["seed"],
        drive_duration=config["demo"]["drive_duration"],
    log:
        "logs/make_demo.log",
    benchmark:
        "logs/make_demo.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "$PY -m pipeline.demo --out {params.out:q} --duration {params.duration} --size {params.size}"
        " --seed {params.seed} --drive-duration {params.drive_duration} > {log:q} 2>&1"

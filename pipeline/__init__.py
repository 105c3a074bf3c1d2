"""Audio-Plane talking-head pipeline: one module per Snakemake stage (see README and DESIGN)."""

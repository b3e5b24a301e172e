# Cross-architecture universality pipeline (Wang et al. 2024), the embedded default.
#   snakemake --cores 2                                  # the toy zoo, offline, on a CPU
#   snakemake --cores 2 --configfile presets/micro.yaml  # the test-sized DAG
# A --configfile replaces config.yaml wholesale (presets are complete configs), so that a preset
# never inherits the toy zoo's models.
from snakemake.utils import min_version

min_version("9.0")


if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/zoo.smk"
include: "rules/sae.smk"
include: "rules/compare.smk"
include: "rules/circuits.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),

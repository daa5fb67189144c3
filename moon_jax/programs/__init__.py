"""What the programs (train.py, eval.py, reproduce.py, benchmarks, notebooks) share, one job a
module: ``cli`` (flags, one-line errors and exit statuses, the default workdir), ``runtime``
(multi-host initialisation, the compilation cache) and ``run`` (``train_and_evaluate``).

This is program level: it imports ``moon_jax.training`` and ``moon_jax.evaluation``, and no
package of moon_jax imports it.
"""
from moon_jax.programs.cli import (
    DIVERGED,
    INTERRUPTED,
    USER_ERROR,
    bundled_config,
    bundled_configs_dir,
    config_file_problem,
    config_path_argument,
    default_workdir,
    define_config_flag,
    explicit_overrides,
    load_config_file,
    parse_flags,
    prepare_config,
    quiet_library_logs,
    run_program,
)
from moon_jax.programs.run import train_and_evaluate
from moon_jax.programs.runtime import (PEER_LOST, compilation_cache_dir, distributed_job, enable_compilation_cache,
                                      initialize_distributed)

__all__ = [
    "DIVERGED",
    "INTERRUPTED",
    "PEER_LOST",
    "USER_ERROR",
    "bundled_config",
    "bundled_configs_dir",
    "compilation_cache_dir",
    "config_file_problem",
    "config_path_argument",
    "default_workdir",
    "define_config_flag",
    "distributed_job",
    "enable_compilation_cache",
    "explicit_overrides",
    "initialize_distributed",
    "load_config_file",
    "parse_flags",
    "prepare_config",
    "quiet_library_logs",
    "run_program",
    "train_and_evaluate",
]

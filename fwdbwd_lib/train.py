"""Command line: train a model with backprop or forward gradients from a config file.

    python -m fwdbwd_lib.train --config_path CONFIG.yaml [key=value ...]

Overrides use Hydra's syntax: ``method=forward_gradient``, ``optimizer.lr=0.001``,
``optimizer=adam`` (a group file), ``dataset.train_size=10000``. A comma list runs one run per
combination: ``method=backprop,forward_gradient seed=0,1,2``. Group files are searched in a
``configs/`` folder beside CONFIG.yaml, then in the package's ``fwdbwd_lib/configs``.

Exit status: 0 when every run finished, 1 when a run diverged (NaN or infinite loss), 2 for an
invalid config, missing data or a model that forward-mode AD cannot run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fwdbwd_lib.config import compose_sweep, shipped_config
from fwdbwd_lib.records import STATUS_FINISHED


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fwdbwd_lib.train",
        description="Train a model with backpropagation or forward gradients and record the run.",
        epilog=f"Example: python -m fwdbwd_lib.train --config_path {shipped_config()} "
               "method=forward_gradient optimizer.lr=0.0003",
    )
    parser.add_argument("--config_path", required=True,
                        help="YAML config file (see fwdbwd_lib/configs/cifar10_convnet.yaml)")
    parser.add_argument("overrides", nargs="*",
                        help="key=value overrides in Hydra syntax; comma lists sweep")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    return parser.parse_intermixed_args(argv)


def _format(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fwdbwd_lib.gradients import ForwardADUnsupportedError
    from fwdbwd_lib.training import check_config, train  # imported here so --help stays fast

    try:
        configs = compose_sweep(args.config_path, args.overrides)
        for config in configs:  # every combination of a sweep is checked before the first run
            check_config(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    exit_code = 0
    for index, config in enumerate(configs, start=1):
        if len(configs) > 1:
            logging.getLogger("fwdbwd_lib.train").info("run %d of %d", index, len(configs))
        try:
            result = train(config)
        except (ValueError, FileNotFoundError, ForwardADUnsupportedError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if result.status == STATUS_FINISHED:
            summary = result.summary
            print(f"finished {result.run_dir}: test accuracy {_format(summary['test_accuracy'])}, "
                  f"median step {_format(summary['median_step_time_ms'], '.1f')} ms, "
                  f"peak memory {_format(summary['peak_memory_mib'], '.1f')} MiB")
        else:
            print(f"diverged {result.run_dir}: {result.message}", file=sys.stderr)
            exit_code = 1
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

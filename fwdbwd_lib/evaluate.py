"""Command line: report the test metrics of a saved run.

    python -m fwdbwd_lib.evaluate RUN_DIR [--split test|validation] [--device_id N]

Rebuilds the data and model from RUN_DIR/config.yaml, loads RUN_DIR/model_final.pt (or the last
checkpoint of an unfinished run) and prints loss and accuracy as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
import yaml


def evaluate_run(run_dir: str | Path, split: str = "test", device_id: int | None = None) -> dict:
    """Return the loss and accuracy of the saved model of ``run_dir`` on ``split``."""
    from fwdbwd_lib.training import (
        build_activation, build_data, build_loss, build_model, evaluate, select_device,
        _import_user_modules,
    )

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.yaml")
    weights = run_dir / "model_final.pt"
    if weights.is_file():
        state = torch.load(weights, map_location="cpu")
    elif (run_dir / "checkpoint.pt").is_file():
        state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    else:
        status_path = run_dir / "status.json"
        status = json.loads(status_path.read_text()) if status_path.is_file() else {}
        raise FileNotFoundError(
            f"{run_dir} has neither model_final.pt nor checkpoint.pt (run status: "
            f"{status.get('status', 'unknown')}{': ' + status['message'] if status.get('message') else ''})"
        )
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")

    with open(config_path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    _import_user_modules(config)
    device = select_device(config["device_id"] if device_id is None else device_id)
    data = build_data(config)
    model = build_model(config, data).to(device)
    model.load_state_dict(state)
    dataset = data.test if split == "test" else data.validation
    metrics = evaluate(model, dataset, build_loss(config), build_activation(config), device,
                       config.get("eval_batch_size", 500))
    return {"run_dir": str(run_dir), "split": split, "weights": weights.name
            if weights.is_file() else "checkpoint.pt", **metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fwdbwd_lib.evaluate",
                                     description="Report test metrics of a saved run.")
    parser.add_argument("run_dir", help="a run directory written by fwdbwd_lib.train")
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--device_id", type=int, default=None,
                        help="GPU index, -1 for the CPU (default: the run's device_id)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        metrics = evaluate_run(args.run_dir, args.split, args.device_id)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Do the online feature methods of TSB Table 4 train at TSB's own recipe, or does a loss term run away?

Each (method label, pair) cell of ``suites/tsb_table4.yaml`` trains a few epochs at the suite's recipe (batch 64,
SGD lr 0.05) on the embedded Fashion-MNIST subset, with optional hyper-parameter overrides.  Prints, per cell, the
first and last value of its feature term and its maximum, the cross-entropy, and the top-1 after training ("NaN"
when the NaN guard stopped it).  This is the measurement behind dml_fitnet's β (methods/dml_fitnet.py).

    python benchmarks/online_feature_stability.py [--labels FitNet,AT] [--pairs resnet32,wrn] [--epochs 3]
                                                  [--set beta=100]
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import harness  # noqa: F401  (torchvision shim)
import torch
import yaml

from harness.suite.schema import load_suite
from harness.training.engine import NonFiniteLoss, Trainer


def probe(cell, epochs: int) -> tuple[list[dict], str]:
    trainer = Trainer(cell)
    steps: list[dict] = []
    step = trainer.method.train_step

    def logged(batch, where):
        terms = step(batch, where)
        steps.append({k: float(v) for k, v in terms.items()})
        return terms

    trainer.method.train_step = logged
    try:
        for _ in range(epochs):
            trainer.train_epoch()
            trainer.epoch += 1
        return steps, f"{trainer.evaluate()['top1/net1']:.1f}"
    except NonFiniteLoss:
        return steps, "NaN"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default="FitNet,AT,NST,SP,RKD,PKT,CRD,DML")
    parser.add_argument("--pairs", default="resnet32,wrn", help="substrings of the suite's group names")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], help="hyper-parameter override, e.g. beta=1")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    suite = load_suite("suites/tsb_table4.yaml")
    first_seed = suite.spec.seeds[0]
    for label in args.labels.split(","):
        for pair in args.pairs.split(","):
            cell = next(c for c in suite.cells if c.label == label and pair in c.group_name and c.seed == first_seed)
            cell = replace(cell, hparams={**cell.hparams, **overrides}, stop_epoch=args.epochs,
                           dataset={"name": "fashion_mnist_mini", "train_per_class": args.train_per_class,
                                    "test_per_class": 10})
            steps, top1 = probe(cell, args.epochs)
            feature = [k for k in steps[0] if k.endswith("/net1") and not k.startswith(("ce/", "kl/"))]
            text = " ".join(f"{k} {steps[0][k]:.3g} -> {steps[-1][k]:.3g} (max {max(s[k] for s in steps):.3g})"
                            for k in feature)
            print(f"{label:7s} {cell.group_name:32s} beta={cell.hparams.get('beta')} steps={len(steps)} "
                  f"top1={top1} ce/net1 {steps[0]['ce/net1']:.2f} -> {steps[-1]['ce/net1']:.2f} {text}", flush=True)


if __name__ == "__main__":
    main()

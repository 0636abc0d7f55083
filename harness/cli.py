"""The harness command: run a suite, check it, see where it stands, report and compare its results."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import harness  # noqa: F401  (torchvision shim first)

DEFAULT_RESULTS = "results"
DEFAULT_REPORTS = "reports"


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR|URI",
                   help=f"where results live (default: ./{DEFAULT_RESULTS}): a folder (a shared mount on a cluster) "
                        "or a URI pyarrow opens, such as s3://bucket/path")
    p.add_argument("--reports", default=DEFAULT_REPORTS, metavar="DIR",
                   help=f"where reports are written (default: ./{DEFAULT_REPORTS})")


class Parser(argparse.ArgumentParser):
    """argparse that suggests the flag a mistyped one was meant to be (``--num-cpu`` → ``--num-cpus``)."""

    def error(self, message):
        from harness.registry import did_you_mean

        flags = _flags(self)
        for word in message.split(": ", 1)[-1].split():
            if word.startswith("--") and word not in flags:
                message += did_you_mean(word.split("=")[0], flags).replace(" (", "; ", 1).rstrip(")")
                break
        super().error(message)


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of ``parser`` and of its sub-commands' parsers."""
    out = []
    for action in parser._actions:
        out += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += [f for f in _flags(sub) if f not in out]
    return out


OVERRIDES_HELP = ("key=value changes to the suite file, validated like it and recorded with every trial, e.g. "
                  "seeds=[0] recipe.epochs=5 methods=dml (a method label keeps that entry)")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    _add_plugins(p)


def _add_plugins(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugins", nargs="+", default=[], metavar="MODULE|FILE.py",
                   help="modules or .py files that register your own methods, models or datasets (besides the "
                        "suite's plugins: key and installed packages' okd_harness.* entry points)")


def _add_data(p: argparse.ArgumentParser, root_help: str) -> None:
    p.add_argument("--data-root", default=None, help=root_help)
    p.add_argument("--offline", action="store_true",
                   help="never download a missing dataset (as $HARNESS_OFFLINE=1): stop in one line instead")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="fetch dataset archives from URL/<archive file name> (as $HARNESS_DATA_MIRROR)")


def _download_settings(args) -> dict[str, str]:
    """The environment that --offline and --mirror stand for (read by the dataset loaders, here and in trials)."""
    env = {"HARNESS_OFFLINE": "1"} if getattr(args, "offline", False) else {}
    return {**env, **({"HARNESS_DATA_MIRROR": args.mirror} if getattr(args, "mirror", None) else {})}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="train every unfinished cell of a suite on Ray, then write its report")
    run.add_argument("suite")
    _add_overrides(run)
    _add_store_args(run)
    run.add_argument("--address", default=None,
                     help="join this Ray cluster (default: $RAY_ADDRESS, else start a local instance)")
    run.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    run.add_argument("--num-cpus", type=float, default=None, help="CPUs of the local Ray instance")
    run.add_argument("--num-gpus", type=float, default=None, help="GPUs of the local Ray instance")
    _add_data(run, "folder with the datasets (default: $HARNESS_DATA, else ~/.cache/okd-harness/data)")
    run.add_argument("--device", default="auto", help="auto (cuda when the trial has a GPU), cpu or cuda")
    run.add_argument("--max-failures", type=int, default=2,
                     help="restarts of a trial whose worker or node was lost, each from its last checkpoint (default "
                          "2); a cell that fails by itself (a NaN loss, a bad setting) is recorded and not retried")
    run.add_argument("--smoke", action="store_true",
                     help="scaled down: 2 epochs, 20 images per class, the embedded dataset if the suite's is absent")
    run.add_argument("--log", action="append", default=None, metavar="TRACKER[,TRACKER]",
                     help="log every cell as a run to these experiment trackers: wandb, mlflow, tensorboard or a "
                          "plug-in's (comma-separated or repeated; default: the suite's log: key, else none; 'none': "
                          "no tracker); pip install \"okd-harness[wandb]\" (or [mlflow], [tensorboard]) first")
    run.add_argument("--log-offline", action="store_true",
                     help="trackers write local files only: W&B offline runs under --results (wandb sync them "
                          "later), MLflow its SQLite store there even where $MLFLOW_TRACKING_URI names a server")
    run.add_argument("--dry-run", action="store_true",
                     help="check everything a run checks, list the cells and stages it would train and their "
                          "estimated cost, and train nothing")

    validate = sub.add_parser("validate", help="check suite files and count their cells")
    validate.add_argument("suites", nargs="+", help="suite files, then any key=value overrides for all of them")
    validate.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR|URI",
                          help="a store whose finished GPU trials give the rate of the cost estimate (default: results)")
    _add_plugins(validate)

    report = sub.add_parser("report", help="aggregate finished cells into Markdown and LaTeX tables")
    report.add_argument("suite")
    _add_overrides(report)
    _add_store_args(report)
    report.add_argument("--smoke", action="store_true", help="the report of the suite's --smoke run")
    _add_data(report, "as given to 'harness run --smoke'")

    analyze = sub.add_parser("analyze", help="CKA and KL between each student and its teacher / proxy (ACKD Table 1)")
    analyze.add_argument("suite")
    _add_overrides(analyze)
    _add_store_args(analyze)
    analyze.add_argument("--smoke", action="store_true", help="analyse the suite's --smoke run")
    _add_data(analyze, "where datasets live (as given to 'harness run')")
    index = sub.add_parser("index", help="write suites/README.md: every suite, its table, needs, GPU-hours, status")
    index.add_argument("--suites", default="suites", help="folder of suite files (default: suites)")
    index.add_argument("--results", default="results", help="results store whose status is shown (default: results)")
    index.add_argument("--out", default=None, help="file to write (default: <suites>/README.md)")
    status = sub.add_parser("status", help="where a suite stands in a results store (finished, failed, training, "
                                           "not started, time left), from its records: no Ray, nothing trains")
    status.add_argument("suite")
    _add_overrides(status)
    status.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR|URI",
                        help=f"the results store (default: ./{DEFAULT_RESULTS})")
    status.add_argument("--smoke", action="store_true", help="the suite's --smoke run")
    _add_data(status, "as given to 'harness run'")
    compare = sub.add_parser("compare", help="two result sets cell by cell: one suite in two stores, or two suites; "
                                             "the per-seed difference B − A of every output")
    compare.add_argument("suite", help="suite A")
    compare.add_argument("other", nargs="?", default=None, help="suite B (default: suite A again)")
    compare.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR|URI", help="the store of A (default: "
                         f"./{DEFAULT_RESULTS})")
    compare.add_argument("--other-results", default=None, metavar="DIR|URI", help="the store of B (default: A's)")
    compare.add_argument("--smoke", action="store_true", help="the suites' --smoke runs")
    _add_data(compare, "as given to 'harness run'")
    bench = sub.add_parser("bench", help="train a suite's first cells for a few steps in each mode (separate, "
                                         "stacked peers, k cells packed per device): images/s, memory, and the "
                                         "projected GPU-hours of the whole suite")
    bench.add_argument("suite")
    _add_overrides(bench)
    bench.add_argument("--cells", type=int, default=1, help="how many of the suite's cells to measure (default 1)")
    bench.add_argument("--steps", type=int, default=20, help="timed training steps per measurement (default 20)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    bench.add_argument("--min-seconds", type=float, default=2.0,
                       help="each of the 3 timed windows lasts at least this long too (default 2; the median is kept)")
    bench.add_argument("--packed", default="4,8", metavar="K,K",
                       help="cells per device of the packed mode (default 4,8; 0 skips it)")
    bench.add_argument("--seeds", default="4", metavar="K,K",
                       help="seeds of a cell stacked into one network in the seeds mode (default 4; 0 skips it)")
    bench.add_argument("--modes", default="separate,stacked,packed,seeds", help="modes to measure (default: all)")
    bench.add_argument("--devices", type=int, default=1, help="devices the suite's wall time is projected on")
    bench.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: cuda where there is one)")
    bench.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR|URI",
                       help="the store the measurement is kept in, for 'harness index' and 'validate'")
    bench.add_argument("--smoke", action="store_true", help="the suite's --smoke cells")
    _add_data(bench, "as given to 'harness run'")
    sub.add_parser("doctor", help="check this machine's GPU path (PASS/FAIL per check, sized for 10 min on one GPU; "
                                  "on a CPU the checks it allows, and what it skipped)")
    data = sub.add_parser("data", help="datasets here: 'harness data check' says which load, from where, and their "
                                       "fingerprints; 'harness data get NAME' downloads one")
    data.add_argument("action", choices=["check", "get"],
                      help="check: what is here; get: download (or unpack) the datasets named, then check them")
    data.add_argument("names", nargs="*", help="datasets (default for check: every registered one)")
    _add_data(data, "folder with the datasets (default: $HARNESS_DATA, else ~/.cache/okd-harness/data)")
    _add_plugins(data)
    lister = sub.add_parser("list", help="registered methods, models, datasets, recipes and experiment trackers")
    lister.add_argument("what", nargs="?", choices=["methods", "models", "datasets", "recipes", "trackers"])
    _add_plugins(lister)
    return parser


def cmd_validate(args) -> int:
    import functools

    from harness.api import suite_problems
    from harness.costs.rates import bench_memory, cost_words, measured_rate
    from harness.results.store import ResultStore
    from harness.costs.packing import repack
    from harness.suite.schema import SuiteError, load_suite

    store = ResultStore(args.results)
    rate, measured = measured_rate(store), functools.cache(lambda: bench_memory(store))
    status = 0
    overrides = [a for a in args.suites if "=" in a and not Path(a).exists()]
    for path in [a for a in args.suites if a not in overrides]:
        try:
            suite = load_suite(path, overrides, args.plugins)
        except SuiteError as e:
            print(e, file=sys.stderr)
            status = 2
            continue
        repack(suite, measured)
        problems = suite_problems(suite)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            status = 2
            continue
        groups = {c.row_name for c in suite.cells}
        print(f"{path}: ok, {len({c.hash for c in suite.cells})} cells ({len(groups)} groups × "
              f"{len(suite.labels())} methods × {len(suite.spec.seeds)} seeds)"
              + cost_words(suite, rate) + (f"; {suite.spec.resources.packing}" if suite.spec.resources.packing else ""))
    return status


def cmd_run(args) -> int:
    from harness import api

    suite = _load(args)
    if args.dry_run:
        from harness.costs.rates import cost_words, measured_rate
        from harness.scheduling.runner import dry_run_lines

        trackers = api.trackers(suite, args.results, args.log, args.log_offline)
        suite, store = api.prepare_run(suite, args.results, args.data_root)
        cost = cost_words(suite, measured_rate(store))
        print("\n".join(dry_run_lines(suite, store) + [t.opening() for t in trackers])
              + (f"\nwhole suite{cost.removeprefix(';')}" if cost else ""))
        return 0
    summary = api.run_suite(suite, results=args.results, reports=args.reports, data_root=args.data_root,
                            device=args.device, address=args.address, dashboard=not args.no_dashboard,
                            num_cpus=args.num_cpus, num_gpus=args.num_gpus, max_failures=args.max_failures,
                            smoke_checks=args.smoke, log_to=args.log, log_offline=args.log_offline)
    if summary.unfinished:
        print(f"interrupted with {len(summary.unfinished)} cell(s) unfinished: run the same command again to "
              "resume; finished cells are kept", file=sys.stderr)
        return 130
    if summary.failed:
        print(f"{len(summary.failed)} cell(s) failed (recorded with their error, retried on the next run): "
              + "; ".join(summary.failed), file=sys.stderr)
        return 1
    return 0


def cmd_report(args) -> int:
    from harness.reporting.report import write_report
    from harness.results.store import ResultStore

    store = ResultStore(args.results)
    write_report(_bound(_load(args), store, args), store, args.reports)
    return 0


def _bound(suite, store, args):
    """The suite's cells for the data here (the keys its run used); the plain keys where the data is not here."""
    from harness.data.datasets import DatasetError
    from harness.suite.binding import bind_data, dataset_loader

    try:
        return bind_data(suite, store, dataset_loader(args.data_root), log=lambda line: print(line, file=sys.stderr),
                         say_unchecked=False)
    except DatasetError as e:
        print(f"{suite.path}: the data is not here ({str(e)[:200]}); showing the cells of the data first recorded",
              file=sys.stderr)
        return suite


def _load(args):
    from harness.api import load_suite

    return load_suite(args.suite, *getattr(args, "overrides", []), smoke=args.smoke, data_root=args.data_root,
                      plugins=getattr(args, "plugins", []))


def cmd_status(args) -> int:
    from harness.reporting.status import status_lines
    from harness.results.store import ResultStore

    store = ResultStore(args.results)
    print("\n".join(status_lines(_bound(_load(args), store, args), store)))
    return 0


def cmd_compare(args) -> int:
    import argparse as _argparse

    from harness.reporting.compare import compare_frame, compare_text
    from harness.results.store import ResultStore

    a_store = ResultStore(args.results)
    b_store = ResultStore(args.other_results or args.results)
    a = _bound(_load(args), a_store, args)
    b_args = _argparse.Namespace(**{**vars(args), "suite": args.other or args.suite})
    b = _bound(_load(b_args), b_store, b_args)
    if (args.other or args.suite) == args.suite and b_store.uri == a_store.uri:
        print("compare: A and B are the same suite in the same store; give another suite or --other-results",
              file=sys.stderr)
        return 2
    frame = compare_frame(a, a_store, b, b_store)
    print(compare_text(frame, f"{a.path} in {a_store.uri}", f"{b.path} in {b_store.uri}",
                       a.spec.evaluation.metric))
    return 0


def cmd_bench(args) -> int:
    from harness.reporting.bench import bench_table, save_bench
    from harness.results.store import ResultStore
    from harness.costs.bench import MODES, Timing, measure_cell, measure_packed, measure_seeds, seed_stack_error, \
        stack_error
    from harness.training.engine import Runtime

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    counts = [k.strip() for k in args.packed.split(",") if k.strip()]
    seed_counts = [k.strip() for k in args.seeds.split(",") if k.strip()]
    if (unknown or args.cells < 1 or args.steps < 1 or args.warmup < 0 or args.min_seconds < 0
            or not all(k.isdigit() for k in counts + seed_counts) or any(k == "1" for k in seed_counts)):
        print(f"bench: --modes takes {', '.join(MODES)}; --packed whole numbers (4,8); --seeds whole numbers from 2 "
              "(4,8); --cells and --steps at least 1; --warmup and --min-seconds at least 0", file=sys.stderr)
        return 2
    packed = [int(k) for k in counts if int(k) > 0]
    seeds = [int(k) for k in seed_counts if int(k) > 0]
    measure = {"packed": measure_packed, "seeds": measure_seeds}
    store = ResultStore(args.results)
    suite = _load(args)
    runtime = Runtime(device=args.device, data_root=args.data_root, compile=suite.spec.resources.compile,
                      deterministic=suite.spec.resources.deterministic)
    cells = list({c.hash: c for c in suite.cells}.values())[: args.cells]
    timing = Timing(args.steps, args.warmup, args.min_seconds)
    measures = []
    for cell in cells:
        config = cell.to_dict()
        for mode in modes:
            refused = {"stacked": stack_error, "seeds": seed_stack_error}.get(mode, lambda c: None)(cell)
            if refused:
                print(f"{cell.describe()}: not {'stacked' if mode == 'stacked' else 'seed-stacked'}: {refused}",
                      file=sys.stderr)
                continue
            for k in {"packed": packed, "seeds": seeds}.get(mode, [1]):
                m = (measure[mode](config, runtime, timing, k) if mode in measure else
                     measure_cell(config, runtime, timing, mode))
                print(f"{m.mode}{f' ×{k}' if mode in measure else ''} {m.cell}: "
                      + (m.error or f"{m.images_per_s:,.0f} img/s per cell, {m.aggregate:,.0f} per device"),
                      file=sys.stderr)
                measures.append(m)
    print(bench_table(suite, measures, args.devices))
    device = runtime.torch_device()
    print(f"kept in {store.uri}/{save_bench(store, suite, measures, str(device), args.steps)}")
    return 0


def cmd_analyze(args) -> int:
    from harness.reporting.analysis import analyze_suite
    from harness.results.store import ResultStore

    store = ResultStore(args.results)
    suite = _bound(_load(args), store, args)
    frame = analyze_suite(suite, store, args.reports, args.data_root)
    print(f"analysed {len(frame)} trial(s): {Path(args.reports) / (suite.name + '_analysis.md')}")
    return 0


def cmd_index(args) -> int:
    from harness.reporting.index import build_index, render_index

    lines, broken, missing, rate = build_index(args.suites, args.results)
    out = Path(args.out or Path(args.suites) / "README.md")
    out.write_text(render_index(lines, broken, missing, rate))
    print(f"{out}: {len(lines)} suites, {len(missing)} paper tables without a suite, {len(broken)} invalid")
    return 1 if broken else 0


def cmd_doctor(args) -> int:
    from harness.doctor import run_doctor

    return run_doctor()


def cmd_data(args) -> int:
    """``harness data check|get``: one line per dataset; exit 1 where a dataset asked for by name is not here."""
    from harness.data.fingerprint import data_check, data_get
    from harness.registry import load_plugin
    from harness.training.method import load_methods

    for spec in args.plugins:
        load_plugin(spec)
    load_methods()  # and the installed plug-ins' datasets
    if args.action == "get" and not args.names:
        print("error: harness data get: name the datasets to get, e.g. harness data get cifar100", file=sys.stderr)
        return 2
    results = (data_get if args.action == "get" else data_check)(args.names, args.data_root)
    for name, present, what in results:
        print(f"{name}: {'present' if present else 'missing'}: {what}")
    return 1 if args.names and not all(present for _, present, _ in results) else 0


def cmd_list(args) -> int:
    from harness.registry import load_plugin
    from harness.reporting.listing import listing

    for spec in args.plugins:
        load_plugin(spec)
    print(listing(args.what))
    return 0


def main(argv: list[str] | None = None) -> int:
    from harness.data.datasets import DatasetError
    from harness.registry import NameClash, PluginError, UnknownName
    from harness.results.location import StorageError
    from harness.scheduling.runner import ResourceError
    from harness.suite.schema import SuiteError
    from harness.tracking.trackers import TrackerError
    from harness.training.stages import StageError

    args = build_parser().parse_args(argv)
    command = {"run": cmd_run, "validate": cmd_validate, "report": cmd_report, "analyze": cmd_analyze, "index": cmd_index,
               "status": cmd_status, "compare": cmd_compare, "bench": cmd_bench, "list": cmd_list, "data": cmd_data,
               "doctor": cmd_doctor}[args.command]
    settings = _download_settings(args)
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        return command(args)
    except (SuiteError, DatasetError, UnknownName, StageError, ResourceError,
            StorageError, PluginError, NameClash, TrackerError) as e:
        print(f"error: {e}" if not isinstance(e, SuiteError) else str(e), file=sys.stderr)
        return 2
    finally:  # a command run in process (the tests, a notebook) leaves the caller's environment as it was
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


if __name__ == "__main__":
    sys.exit(main())

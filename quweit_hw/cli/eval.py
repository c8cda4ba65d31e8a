"""`quweit-hw eval`."""

import argparse
import sys

from ..backends import BACKENDS
from ..errors import UserError
from ..resources import REFERENCE_CHECKPOINT
from .options import (dropout_rate, input_file, input_folder, input_path, nonnegative_int, positive_int,
                      positive_power_of_two)


def configure(parser):
    parser.add_argument("checkpoint", nargs="?", type=input_path, default=str(REFERENCE_CHECKPOINT),
                        help="checkpoint, or with --backend a version 2 bundle (default: the shipped reference model)")
    parser.add_argument("--mlp-backend", choices=BACKENDS, default="torch",
                        help="where the LUT-MLP blocks run: torch eval, the golden model, the simulated Verilog, or the board")
    parser.add_argument("--bundle", type=input_folder,
                        help="bundle exported from the checkpoint (default: export it to a temporary folder)")
    parser.add_argument("--split", choices=("train", "test", "val"), default="test",
                        help="data split (fashion-mnist: train|test; text: train|val, test meaning val)")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first LIMIT inputs (default: all)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="inputs per batch")
    parser.add_argument("--compare", action="store_true",
                        help="also run torch: check every token's counts and every prediction; exit 1 on any difference")
    parser.add_argument("--backend", choices=("golden", "rtl", "board"),
                        help="whole integer model: the positional argument is a version 2 bundle, evaluated by "
                             "the golden model, by the whole-model engine's Verilog under Verilator (rtl) or by the "
                             "whole-model board top on --port (board), both checked against the golden model "
                             "(--compare: beside torch's integer eval of its source checkpoint; default: none, the "
                             "checkpoint's MLP blocks on --mlp-backend)")
    parser.add_argument("--bench", type=positive_int, default=None, metavar="R",
                        help="--backend board: also run the board's batch benchmark: the first test images, as "
                             "many as its batch memory holds, R times over back to back, timed in engine cycles (default: none)")
    parser.add_argument("--lanes", type=positive_power_of_two, default=32, metavar="N",
                        help="--backend rtl: multipliers of the engine's MAC array (default: 32)")
    parser.add_argument("--backpressure", type=dropout_rate, default=0.0, metavar="P",
                        help="--backend rtl: the fraction of clocks on which the harness gaps i.valid and drops "
                             "o.ready, at random (default: 0, never)")
    parser.add_argument("--seed", type=nonnegative_int, default=1,
                        help="--backend rtl: seed of the --backpressure draws (default: 1)")
    parser.add_argument("--port", help="serial port of the board (--mlp-backend board, --backend board; default: none, required there)")
    parser.add_argument("--sim", choices=("verilator", "icarus"), help="simulator for --mlp-backend rtl (default verilator)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (there is none anyway when stderr is not a terminal)")


def run(args):
    if args.bench and args.backend != "board":
        raise UserError("--bench runs on the board: add --backend board --port PORT")
    if args.backend == "board" and not args.port:
        raise UserError("--backend board needs --port (the board's serial port)")
    if args.backpressure and args.backend != "rtl":
        raise UserError("--backpressure applies to --backend rtl (the whole-model Verilog under Verilator)")
    if args.backend is not None:  # numpy only: the golden model needs no torch
        _positional(input_folder, args.checkpoint, f"--backend {args.backend} evaluates a version 2 bundle: ")
        return run_whole_model(args)
    from ..evaluation import evaluate_with_backend, summary_line

    _positional(input_file, args.checkpoint)  # a checkpoint
    result = evaluate_with_backend(args.checkpoint, args.mlp_backend, bundle_path=args.bundle, split=args.split,
                                   limit=args.limit, compare=args.compare, port=args.port, sim=args.sim,
                                   batch_size=args.batch_size, progress=not args.no_progress and sys.stderr.isatty())
    print(f"{args.mlp_backend}: {summary_line(result['metrics'])}")
    if not args.compare or args.mlp_backend == "torch":
        return 0
    agreement = result["agreement"]
    print(f"torch: {summary_line(result['torch_metrics'])}")
    print(f"counts vs torch eval: {agreement}")
    same = result["same_predictions"]
    print(f"predictions: {'identical' if same else 'DIFFERENT'} on all {len(result['metrics']['predictions'])} outputs")
    return 0 if same and agreement.exact else 1


def _positional(check, path, why=""):
    """The positional argument checked as a file or a folder, once --backend says which."""
    try:
        check(str(path))
    except argparse.ArgumentTypeError as e:
        raise UserError(f"argument checkpoint: {why}{e}") from None


def run_whole_model(args):
    """`eval BUNDLE --backend golden|rtl [--compare]`: the whole integer model of a version 2 bundle."""
    from ..whole_model_eval import evaluate_model_bundle

    r = evaluate_model_bundle(args.checkpoint, args.backend, split=args.split, limit=args.limit, compare=args.compare,
                              lanes=args.lanes, port=args.port, bench=args.bench or 0,
                              backpressure=args.backpressure, seed=args.seed)
    correct = round(r["accuracy"] * r["n"])
    print(f"{args.backend} (whole integer model): accuracy {r['accuracy'] * 100:.2f} % ({correct}/{r['n']})")
    exact = True
    if args.backend == "rtl":
        cycles = sorted(set(r["cycles"].tolist()))
        exact = r["differing_from_golden"] == 0 and r["class_output_differs"] == 0 and cycles == [r["rtl"]["cycles_per_image"]]
        print(f"rtl vs golden: {r['differing_from_golden']} of {r['logits'].size} logits differ, "
              f"{r['class_output_differs']} class outputs differ from the logits' argmax; cycles per image {cycles} "
              f"(generator: {r['rtl']['cycles_per_image']}); {r['rtl']['cycles']:,} clocks in {r['rtl']['seconds']} s")
        rtl = r["rtl"]
        print(f"rtl run: backpressure {rtl['backpressure']} (seed {rtl['seed']}): {rtl['valid_gaps']:,} clocks with "
              f"a pixel held back while i.ready, {rtl['ready_stalls']:,} with a result held by o.ready low; Verilator build "
              f"{rtl['build_seconds']} s, Verilog generation {rtl['generation_seconds']} s")
    if args.backend == "board":
        exact = _print_board(r)
    if not args.compare:
        return 0 if exact else 1
    print(f"torch integer eval: accuracy {r['torch_accuracy'] * 100:.2f} %")
    print(f"logits differing from torch: {r['differing_logits']} of {r['logits'].size}; "
          f"predictions differing: {r['differing_predictions']} of {r['n']}")
    return 0 if r["differing_logits"] == 0 and exact else 1


def _print_board(r):
    """The board run's lines; whether every logit, class, cycle count (and the benchmark's checksum) held."""
    b, cycles = r["board"], sorted(set(r["cycles"].tolist()))
    exact = r["differing_from_golden"] == 0 and r["class_output_differs"] == 0 and cycles == [b["cycles_per_image"]]
    print(f"board vs golden: {r['differing_from_golden']} of {r['logits'].size} logits differ, "
          f"{r['class_output_differs']} class outputs differ from the logits' argmax; cycles per image {cycles} "
          f"(generator: {b['cycles_per_image']}); {b['images_per_second']:.1f} images/s over the link "
          f"({r['n']} in {b['seconds']} s)")
    if "bench" in r:
        x = r["bench"]
        rate = f"{x['images_per_second']:,.0f} images/s" if x["images_per_second"] else "images/s unknown (no clock)"
        print(f"on-chip benchmark: {x['images']} images back to back in {x['cycles']:,} engine cycles "
              f"({x['cycles_per_image']:,.1f} per image): {rate} at {x['engine_clock_hz'] / 1e6:g} MHz; "
              f"checksum {'equal to the golden model' if x['checksum_ok'] else 'DIFFERS from the golden model'}")
        exact = exact and x["checksum_ok"]
    return exact

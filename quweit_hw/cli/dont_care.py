"""`quweit-hw dont-care`."""

from .options import input_path, output_folder, positive_int


def configure(parser):
    parser.add_argument("bundle", type=input_path, help="a version 2 (whole integer model) bundle folder")
    parser.add_argument("-o", "--out", type=output_folder, required=True,
                        help="the new bundle folder (no default: required; the source bundle is never changed)")
    parser.add_argument("--images", type=positive_int, default=None,
                        help="training images whose addresses count as seen (default: all 60,000)")
    parser.add_argument("--min-count", type=positive_int, default=1,
                        help="an address counts as seen when at least this many training tokens reach it "
                             "(default 1: the model is unchanged on the training images; more frees rare "
                             "addresses too, for fewer LUT4 at some accuracy)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle folder at --out")


def run(args):
    from ..gateware.data_dont_care import learn_dont_cares

    figures = learn_dont_cares(args.bundle, args.out, images=args.images, min_count=args.min_count,
                               force=args.force)
    for block in figures["blocks"]:
        layers = ", ".join(f"layer {x['layer']}: {x['seen_mean']:.1f} of {x['addresses']} addresses seen, "
                           f"{x['entries_changed']} entries refilled" for x in block["layers"])
        print(f"block {block['block']}: LUT4 {block['lut4_before']} -> {block['lut4_after']} ({layers})")
    print(f"test accuracy (golden model): {figures['test_accuracy_before']:.2%} -> {figures['test_accuracy_after']:.2%}")
    print(f"wrote {args.out}: this bundle differs from its checkpoint on inputs the training images never "
          "produced; evaluate it with --backend golden")
    return 0

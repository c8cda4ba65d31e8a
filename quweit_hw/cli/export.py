"""`quweit-hw export`."""

from ..contract.model_bundle import FORMAT_VERSIONS
from ..resources import REFERENCE_CHECKPOINT
from .options import input_file, output_folder


def configure(parser):
    parser.add_argument("checkpoint", nargs="?", type=input_file, default=str(REFERENCE_CHECKPOINT),
                        help="checkpoint of a LUT or an integer model (default: the shipped reference model)")
    parser.add_argument("--format-version", type=int, choices=FORMAT_VERSIONS,
                        help="bundle format: 2 the whole integer model (integer checkpoints only), 1 the LUT-MLP "
                             "blocks only (default: 2 for an integer checkpoint, else 1)")
    parser.add_argument("-o", "--out", type=output_folder,
                        help="bundle folder to write (default: export/<checkpoint folder name>)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing bundle folder (its files that are not the bundle's are kept)")


def run(args):
    from ..contract.bundle_files import load_bundle
    from ..model.export import export_checkpoint

    bundle = load_bundle(export_checkpoint(args.checkpoint, args.out, force=args.force,
                                               format_version=args.format_version))
    nodes = sum(b.lut_nodes for b in bundle.blocks)
    print(f"wrote {bundle.path}: {len(bundle.blocks)} block(s), {nodes} LUT nodes, "
          f"format version {bundle.manifest['format_version']}")
    return 0

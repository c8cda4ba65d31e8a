"""`quweit-hw report`."""

from ..resources import REFERENCE_CHECKPOINT
from .options import input_file


def configure(parser):
    parser.add_argument("checkpoint", nargs="?", type=input_file, default=str(REFERENCE_CHECKPOINT),
                        help="checkpoint (default: the shipped reference model)")


def run(args):
    from ..model.accounting import format_report, model_report

    print(format_report(model_report(args.checkpoint)))
    return 0

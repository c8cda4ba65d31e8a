"""`quweit-hw report`."""

from ..resources import REFERENCE_CHECKPOINT
from .options import input_path


def configure(parser):
    parser.add_argument("checkpoint", nargs="?", type=input_path, default=str(REFERENCE_CHECKPOINT),
                        help="checkpoint, or a version 2 (whole integer model) bundle folder, read without torch "
                             "(default: the shipped reference model)")


def run(args):
    if args.checkpoint.is_dir():
        from ..contract.integer_accounting import bundle_report, format_program_report

        print(format_program_report(bundle_report(args.checkpoint)))
    else:
        from ..model.accounting import report_text

        print(report_text(args.checkpoint))
    return 0

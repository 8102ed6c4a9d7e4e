"""Command-line options shared by several commands (data set, device, progress, fractions).

Only argparse and the standard library are imported here, so that building the parser (and
`nasaudit --help`) never imports torch. Each command keeps its own help texts and defaults; the
helpers only make sure the flags are spelled and validated the same way everywhere.
"""

from __future__ import annotations

import argparse
from fractions import Fraction

# The names `nasaudit.data.load_dataset` accepts. Equal to `nasaudit.data.DATASETS` (a test keeps
# them equal); not imported from there because nasaudit.data imports torch.
DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet32", "digits")

DEVICE_HELP = "auto | cpu | cuda | cuda:N"


def add_data_options(
    parser: argparse.ArgumentParser,
    *,
    dataset_help: str,
    dataset_default: str | None = None,
    data_dir_help: str = "folder with the data set files",
    download_help: str | None = None,
    num_classes_help: str | None = None,
) -> None:
    """--dataset (one of DATASETS) and --data-dir; --download and --num-classes when their help
    text is given (commands that load the data set themselves)."""
    parser.add_argument(
        "--dataset", choices=DATASETS, default=dataset_default, help=dataset_help
    )
    parser.add_argument("--data-dir", default=None, help=data_dir_help)
    if download_help is not None:
        parser.add_argument("--download", action="store_true", help=download_help)
    if num_classes_help is not None:
        parser.add_argument("--num-classes", type=int, default=None, help=num_classes_help)


def add_device_option(parser: argparse.ArgumentParser, *, show_default: bool = False) -> None:
    """--device (default "auto"; resolved by nasaudit.infra.device.resolve_device)."""
    suffix = " (default: auto)" if show_default else ""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP + suffix)


def add_progress_option(parser: argparse.ArgumentParser, help: str = "no progress bars") -> None:
    """--no-progress: turn the tqdm bars off (args.no_progress)."""
    parser.add_argument("--no-progress", action="store_true", help=help)


def parse_fraction(text: str) -> float:
    """Parse a number or a fraction: "8/255" or "0.0314" -> float (an argparse `type`).

    Raises argparse.ArgumentTypeError for anything else (never evaluates the text).
    """
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"expected a number or a fraction like 8/255, got {text!r}"
        ) from None


def check_bounds(flag: str, value, *, min=None, max=None, gt=None, lt=None):  # noqa: A002
    """`value` when it lies within the bounds, else InputError(flag, "must be ..., got ...").

    The command line's own check of a number, with the bounds the params/config files use, so
    that `--momentum 2` fails like `momentum = 2` would (one line, exit code 2). None passes.
    """
    from nasaudit.infra.errors import InputError
    from nasaudit.infra.params import out_of_bounds

    if value is None:
        return value
    problem = out_of_bounds(value, min=min, max=max, gt=gt, lt=lt)
    if problem:
        raise InputError(flag, problem)
    if isinstance(value, float) and value != value:  # NaN passes every comparison above
        raise InputError(flag, "must be a number, got nan")
    return value


def check_seed(flag: str, value):
    """`value` if it is a seed in 0..2^63-1 (or None), else InputError naming `flag`."""
    from nasaudit.infra.errors import InputError
    from nasaudit.infra.limits import MAX_SEED

    if value is not None and not 0 <= value <= MAX_SEED:
        raise InputError(flag, f"must be a seed in 0..2^63-1, got {value}")
    return value

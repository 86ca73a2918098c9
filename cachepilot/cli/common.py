"""What the commands share: argument types that refuse bad values in one line, the model flags, prompts files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cachepilot import checks
from cachepilot.errors import CachepilotError, InvalidInputError

RUNS = Path("runs")  # where commands write by default, relative to the working directory


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for i, c in enumerate(columns):  # only the last column may wrap: names must stay whole
        table.add_column(c, no_wrap=i < len(columns) - 1, overflow="fold")
    for r in rows:
        table.add_row(*[str(x) for x in r])
    Console().print(table)


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file; an error names the file where there are none."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"--prompts-file {path}: no such file") from None
    except IsADirectoryError:
        raise InvalidInputError(f"--prompts-file {path} is a folder; give a text file, one prompt per line") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"--prompts-file {path} cannot be read as UTF-8 text ({err})") from None
    prompts = [p.strip() for p in text.splitlines() if p.strip()]
    if not prompts:
        raise InvalidInputError(f"--prompts-file {path} holds no prompts; write one prompt per line")
    return prompts


def model_source(args):
    """The model a command runs on (see `add_model_arguments`)."""
    from cachepilot.models.registry import ModelSource  # each command imports what it runs (cachepilot.cli)

    options = {"height": args.height, "width": args.width, "num_frames": args.num_frames}
    return ModelSource(args.model, args.model_path, args.device, args.dtype,
                       tuple((k, v) for k, v in options.items() if v is not None))


def prompts_for(args, family: str, split: str, what: str) -> "str | list[str]":
    """A command's prompts: its --prompts-file, else toy-wan's `split`; real models need the file."""
    if args.prompts_file:
        return read_prompts(args.prompts_file)
    if family != "toy-wan":
        raise CachepilotError(f"pass --prompts-file (one prompt per line) to {what} for {args.model!r}")
    return split


def checked(check):
    """An argparse type: a number (`cachepilot.checks` rules), refused in one line where it breaks them."""
    def number(text: str):
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return check(value)
        except InvalidInputError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return number


COUNT = checked(lambda v: checks.count("value", v))
COUNT0 = checked(lambda v: checks.count("value", v, low=0))
GUIDANCE = checked(checks.guidance)
SEED = checked(checks.seed)
BUDGET = checked(checks.budget)
NUMBER = checked(lambda v: checks.number("value", v))
POSITIVE = checked(lambda v: checks.positive("value", v))
SHARE = checked(lambda v: checks.number("value", v, low=0.0, high=1.0))


def path_check(check):
    """An argparse type: a path that `check` accepts, refused in one line where it does not."""
    def path(text: str) -> str:
        try:
            check(text)
        except InvalidInputError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text
    return path


FOLDER = path_check(checks.folder)
OUTPUT_FILE = path_check(checks.output_file)
DEVICE = path_check(checks.device)


def budgets(text: str) -> tuple[float, ...]:
    """Comma-separated fractions of full compute."""
    return tuple(BUDGET(v.strip()) for v in text.split(","))


def listed(check):
    """An argparse type: comma-separated values that `check` (an argparse type) accepts, in the order given, each once."""
    def values(text: str) -> tuple:
        return tuple(dict.fromkeys(check(v.strip()) for v in text.split(",")))
    return values


STEP_COUNTS = listed(COUNT)
GUIDANCES = listed(GUIDANCE)


def budgets_or_none(text: str) -> tuple[float, ...]:
    return () if text.strip().lower() in ("", "none") else budgets(text)


def one_line(message: str) -> str:
    """An error as one line: a newline it quotes (a path can hold one) is shown escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as every other error of the command line
        print(f"cachepilot: error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def add_model_arguments(p, prompts_file: str | None = None) -> None:
    """Which model, from where, on which device and in which dtype, and the video size it generates."""
    p.add_argument("--model", default="toy-wan")
    p.add_argument("--model-path", help="local diffusers folder with the model's weights")
    p.add_argument("--device", type=DEVICE, help="torch device to run on, e.g. cuda (default: cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights' dtype (default: as saved)")
    p.add_argument("--height", type=COUNT, help="video height in pixels (default: the pipeline's)")
    p.add_argument("--width", type=COUNT, help="video width in pixels (default: the pipeline's)")
    p.add_argument("--num-frames", type=COUNT, help="video length in frames (default: the pipeline's)")
    if prompts_file:
        p.add_argument("--prompts-file", help=prompts_file)


def add_process_arguments(p) -> None:
    """Lightning's flags for running a phase over several processes (`cachepilot.parallel`)."""
    p.add_argument("--accelerator", default="cpu", help="Lightning Fabric flag (default cpu; gpu, cuda, auto)")
    p.add_argument("--devices", default="1", help="processes per node, one per device (default 1)")
    p.add_argument("--num-nodes", type=COUNT, default=1, help="nodes (default 1)")
    p.add_argument("--strategy", default="auto", help="Lightning Fabric flag (default auto; ddp re-runs the command "
                   "once per device, ddp_spawn spawns the processes)")


def processes(args):
    """The `Processes` the flags of `add_process_arguments` ask for."""
    from cachepilot.parallel import Processes  # imported when run (cachepilot.cli)

    return Processes(args.accelerator, devices(args.devices), args.num_nodes, args.strategy)


def devices(flag):
    """Lightning's --devices: a count, or a list or "auto" as given."""
    return int(flag) if str(flag).isdigit() else flag


def add_setting_arguments(p, steps: int | None = 50, guidance: float | None = 5.0) -> None:
    """The generation setting a command runs at (None: its config's default, said in the help)."""
    p.add_argument("--steps", type=COUNT, default=steps,
                   help="denoising steps" + (" (default 50)" if steps is None else ""))
    p.add_argument("--guidance", type=GUIDANCE, default=guidance,
                   help="classifier-free guidance scale" + (" (default 5)" if guidance is None else ""))

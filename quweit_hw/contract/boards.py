"""Board settings: the board variants of `boards/*.toml`, and the clock arithmetic they imply
(UART divisor, ECP5 PLL dividers). Plain Python: the gateware reads these, the host too.
"""

import dataclasses
import importlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..resources import BOARDS_DIR


@dataclass(frozen=True)
class BoardConfig:
    """One board variant of boards/*.toml."""
    name: str
    platform: str            # "module:Class" of an amaranth_boards platform
    luts: int
    clock_hz: int
    baud: int
    max_tokens: int
    frame_timeout_ms: float
    reset_button: str
    registers: str
    fit_fraction: float
    nextpnr_opts: tuple
    synth_opts: tuple = ()    # extra options of Yosys's synth_ecp5 (Amaranth's synth_opts)
    engine_clock_hz: int = 0  # the engines' own clock (PLL second output); 0: clock_hz, one clock
    model_clock_hz: int = 0   # the whole-model top's link clock; 0: clock_hz
    model_engine_clock_hz: int = 0  # the whole-model engine's clock; 0: the link's, one clock
    model_nextpnr_opts: tuple = ()  # nextpnr options of the whole-model top; (): nextpnr_opts
    model_lanes: int = 32     # the whole-model engine's MAC-array width (multipliers)
    batch_images: int = 32    # images the whole-model top's batch memory holds (BENCH)

    @property
    def engine_hz(self):
        return self.engine_clock_hz or self.clock_hz

    def for_whole_model(self):
        """This board with the whole-model top's clocks in `clock_hz` and `engine_clock_hz`
        (which the board top, the PLL and the UART divisor read) and its nextpnr options."""
        return dataclasses.replace(self, clock_hz=self.model_clock_hz or self.clock_hz,
                                   engine_clock_hz=self.model_engine_clock_hz,
                                   nextpnr_opts=self.model_nextpnr_opts or self.nextpnr_opts)

    def with_tool_options(self, synth=(), nextpnr=()):
        """This board with `synth` appended to synth_opts and each option of `nextpnr` replacing
        the one of the same name (and its values) in nextpnr_opts and model_nextpnr_opts."""
        model = replace_options(self.model_nextpnr_opts or self.nextpnr_opts, nextpnr)
        return dataclasses.replace(self, synth_opts=tuple(self.synth_opts) + tuple(synth),
                                   nextpnr_opts=replace_options(self.nextpnr_opts, nextpnr),
                                   model_nextpnr_opts=model if self.model_nextpnr_opts or nextpnr else ())

    def __post_init__(self):
        if self.luts <= 0 or self.clock_hz <= 0 or self.baud <= 0 or self.max_tokens <= 0:
            raise ValueError(f"board {self.name!r}: luts, clock_hz, baud and max_tokens must be positive")
        if self.engine_clock_hz and self.engine_clock_hz < self.clock_hz:
            raise ValueError(f"board {self.name!r}: engine_clock_hz ({self.engine_clock_hz}) must be at least "
                             f"clock_hz ({self.clock_hz}); raise it too (--engine-clock-mhz)")
        if self.model_clock_hz < 0:
            raise ValueError(f"board {self.name!r}: model_clock_hz must be positive, or 0 for clock_hz")
        link = self.model_clock_hz or self.clock_hz
        if self.model_engine_clock_hz and self.model_engine_clock_hz < link:
            raise ValueError(f"board {self.name!r}: model_engine_clock_hz ({self.model_engine_clock_hz}) must be at "
                             f"least the whole-model top's link clock ({link})")
        if not 1 <= self.batch_images <= 255 or self.model_lanes < 1 or self.model_lanes & (self.model_lanes - 1):
            raise ValueError(f"board {self.name!r}: batch_images must lie in 1 .. 255 and model_lanes be a power "
                             f"of two, got {self.batch_images!r} and {self.model_lanes!r}")
        if not 0 < self.fit_fraction <= 1:
            raise ValueError(f"board {self.name!r}: fit_fraction must lie in (0, 1], got {self.fit_fraction!r}")

    def platform_class(self):
        module, _, cls = self.platform.partition(":")
        return getattr(importlib.import_module(module), cls)

    @property
    def divisor(self):
        return uart_divisor(self.clock_hz, self.baud)


def _option_groups(words):
    """[(option, values...)] of a tool's argument words: each option with the words after it up
    to the next option."""
    groups = []
    for word in words:
        if word.startswith("-") or not groups:
            groups.append([word])
        else:
            groups[-1].append(word)
    return groups


def replace_options(base, extra):
    """`base` with each option of `extra` (with its values) in place of the one of the same name."""
    names = {group[0].split("=")[0] for group in _option_groups(extra)}
    kept = [w for group in _option_groups(base) if group[0].split("=")[0] not in names for w in group]
    return tuple(kept) + tuple(extra)


def board_names(boards_dir=BOARDS_DIR):
    """Every board variant name the files in `boards_dir` define."""
    return sorted(name for f in sorted(Path(boards_dir).glob("*.toml"))
                  for name in tomllib.loads(f.read_text()).get("boards", {}))


def load_board(name, boards_dir=BOARDS_DIR, **overrides):
    """The BoardConfig called `name` (aliases followed, defaults of its file applied, then `overrides`)."""
    for f in sorted(Path(boards_dir).glob("*.toml")):
        spec = tomllib.loads(f.read_text())
        boards = spec.get("boards", {})
        if name not in boards:
            continue
        entry, seen = boards[name], {name}
        while "alias" in entry:
            if entry["alias"] in seen or entry["alias"] not in boards:
                raise UserError(f"board {name!r} in {str(f)!r}: bad alias {entry['alias']!r}")
            seen.add(entry["alias"])
            entry = boards[entry["alias"]]
        fields = {**spec.get("defaults", {}), **entry, **{k: v for k, v in overrides.items() if v is not None}}
        for key in ("nextpnr_opts", "synth_opts", "model_nextpnr_opts"):
            fields[key] = tuple(fields.get(key, ()))
        try:
            return BoardConfig(name=name, **fields)
        except TypeError as e:
            raise UserError(f"board {name!r} in {str(f)!r}: {e}") from None
    raise UserError(f"unknown board {name!r}; boards/ defines {board_names(boards_dir)}")


def uart_divisor(clock_hz, baud):
    """Clock cycles per UART bit; ValueError when the rate error would exceed 2 %."""
    divisor = round(clock_hz / baud)
    if divisor < 4 or abs(clock_hz / divisor - baud) / baud > 0.02:
        raise ValueError(f"baud rate {baud!r} is not reachable from a {clock_hz / 1e6:g} MHz clock "
                         f"(divisor {clock_hz / baud:.2f}; the UART needs a whole divisor of at least 4 "
                         f"within 2 % of it)")
    return divisor


def check_clocks(board, clock_in_hz):
    """ValueError unless `board`'s clocks and baud rate can be made: the UART divisor from
    clock_hz, and (as the board top does) the PLL outputs from the board's `clock_in_hz`."""
    uart_divisor(board.clock_hz, board.baud)
    two = board.engine_hz != board.clock_hz
    if two or board.clock_hz != clock_in_hz:
        pll_params(clock_in_hz, board.clock_hz, board.engine_hz if two else None)


def pll_params(clock_in_hz, clock_hz, second_hz=None):
    """EHXPLLL dividers (CLKI_DIV, CLKFB_DIV, CLKOP_DIV) giving exactly `clock_hz` from `clock_in_hz`
    with the VCO in 400-800 MHz (closest to 600); ValueError when none does. With `second_hz`,
    also CLKOS_DIV for a second output of exactly that frequency from the same VCO."""
    best = None
    for clki in range(1, 129):
        for fb in range(1, 81):
            out = clock_in_hz * fb / clki
            if out != clock_hz or not 3.125e6 <= clock_in_hz / clki <= 400e6:
                continue
            for op in range(1, 129):
                vco = out * op
                os_div = round(vco / second_hz) if second_hz else 0
                if second_hz and not (1 <= os_div <= 128 and vco / os_div == second_hz):
                    continue
                if 400e6 <= vco <= 800e6 and (best is None or abs(vco - 600e6) < abs(best[3] - 600e6)):
                    best = (clki, fb, op, vco, os_div)
    if best is None:
        also = f" and {second_hz / 1e6:g} MHz" if second_hz else ""
        raise ValueError(f"no ECP5 PLL setting makes {clock_hz / 1e6:g} MHz{also} from {clock_in_hz / 1e6:g} MHz")
    return best[:3] + ((best[4],) if second_hz else ())

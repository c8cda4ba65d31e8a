"""A board link core (`LinkCore`, `ModelLinkCore`) in Amaranth's simulator behind a
serial-port-like object, so the host drivers can talk to the real gateware in tests."""

from collections import deque

from amaranth.sim import Simulator


def uart_bits(data):
    """Line levels of 8N1 bytes, one entry per bit time."""
    return [bit for b in data for bit in [0, *((b >> i) & 1 for i in range(8)), 1]]


class SimulatedSerial:
    """The pyserial calls the host drivers make (write, read, in_waiting, reset_input_buffer,
    close), answered by `core` in Amaranth's simulator: written bytes go onto `core.rx` as
    8N1 at `divisor` clocks per bit, and what `core.tx` sends (each stop bit checked) comes
    back through `read`. Simulated time runs only inside `read`, `step_cycles` link clocks
    per call while nothing has arrived: a host's wall-clock timeout then stands for a number
    of simulated clocks.

    The link clock has a period of 1 us; a core whose engine has its own domain gets a
    clock of `engine_period` (default 0.43 us: faster, of unrelated phase)."""

    def __init__(self, core, divisor, *, step_cycles=4000, engine_period=0.43e-6):
        self.core, self.divisor, self.step_cycles = core, divisor, step_cycles
        self.to_board, self.from_board = deque(), bytearray()
        self.stop_bit_errors = 0
        self.sim = Simulator(core)
        self.sim.add_clock(1e-6)
        if getattr(core, "engine_domain", "sync") != "sync":
            self.sim.add_clock(engine_period, domain=core.engine_domain)
        self.sim.add_testbench(self._drive, background=True)
        self.sim.add_testbench(self._monitor, background=True)
        self.cycles = 0

    async def _drive(self, ctx):
        ctx.set(self.core.rx, 1)
        while True:
            if not self.to_board:
                await ctx.tick()
                continue
            for bit in uart_bits([self.to_board.popleft()]):
                ctx.set(self.core.rx, bit)
                await ctx.tick().repeat(self.divisor)

    async def _monitor(self, ctx):
        tx, d = self.core.tx, self.divisor
        while True:
            await ctx.tick()
            if ctx.get(tx):
                continue
            await ctx.tick().repeat(d // 2 - 1)
            value = 0
            for i in range(8):
                await ctx.tick().repeat(d)
                value |= ctx.get(tx) << i
            await ctx.tick().repeat(d)
            self.stop_bit_errors += not ctx.get(tx)
            self.from_board.append(value)

    def run(self, cycles):
        """Advance the simulation by `cycles` link clocks."""
        self.cycles += cycles
        self.sim.run_until(self.cycles * 1e-6)

    def write(self, data):
        self.to_board.extend(bytes(data))
        return len(data)

    @property
    def in_waiting(self):
        return len(self.from_board)

    def read(self, n=1):
        """Up to `n` bytes the board sent; runs the simulation for `step_cycles` first when none wait."""
        if not self.from_board:
            self.run(self.step_cycles)
        out = bytes(self.from_board[:n])
        del self.from_board[:n]
        return out

    def reset_input_buffer(self):
        self.from_board.clear()

    def close(self):
        pass

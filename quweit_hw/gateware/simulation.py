"""The Amaranth-simulation driver of an MLP engine: tokens in with gaps, counts out with stalls."""

import numpy as np

from ..contract import golden
from ..contract.bundle import signed_range
from ..contract.packing import count_fields, token_word
from ..errors import UserError
from .engine import MLPEngine


def simulate(engine, q, *, valid_prob=1.0, ready_prob=1.0, seed=0, max_cycles=None):
    """Run `engine` in Amaranth's simulator on tokens q (N, d): returns (counts (N, d) int64, trace).

    The input gets gaps (i.valid low with probability 1 - valid_prob) and the output
    random stalls (o.ready low with probability 1 - ready_prob). trace = {"accepted":
    cycle of each token's input handshake, "delivered": cycle of each output handshake,
    "cycles": cycles run}. Raises RuntimeError when the outputs do not all arrive in
    max_cycles (default: generous for the given rates).
    """
    from amaranth.sim import Simulator

    block = engine.block
    q = np.asarray(q, np.int64)
    n_tokens, b, cw = len(q), block.bits, block.count_width
    rng = np.random.default_rng(seed)
    if max_cycles is None:
        max_cycles = int((n_tokens * engine.fold + engine.latency + 16) / min(valid_prob, ready_prob) * 3) + 100
    words = [token_word(row, b) for row in q]
    got, accepted, delivered = [], [], []
    state = {"cycle": 0}

    async def driver(ctx):
        index = cycle = 0
        while index < n_tokens and cycle < max_cycles:
            offer = bool(rng.random() < valid_prob)
            ctx.set(engine.i.valid, offer)
            ctx.set(engine.i.payload.as_value(), words[index])
            _, _, ready = await ctx.tick().sample(engine.i.ready)
            if offer and ready:
                accepted.append(cycle)
                index += 1
            cycle += 1
        ctx.set(engine.i.valid, 0)

    async def monitor(ctx):
        cycle = 0
        while len(got) < n_tokens and cycle < max_cycles:
            take = bool(rng.random() < ready_prob)
            ctx.set(engine.o.ready, take)
            _, _, valid, payload = await ctx.tick().sample(engine.o.valid, engine.o.payload.as_value())
            if valid and take:
                got.append(count_fields(payload, block.d, cw))
                delivered.append(cycle)
            cycle += 1
        state["cycle"] = cycle

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(monitor)
    sim.run()
    if len(got) < n_tokens:
        raise RuntimeError(f"engine delivered {len(got)} of {n_tokens} tokens in {max_cycles} cycles")
    return np.array(got, np.int64).reshape(n_tokens, block.d), {
        "accepted": accepted, "delivered": delivered, "cycles": state["cycle"]}


def check_engine(block, tokens=256, *, registers="all", seed=0):
    """Simulate `block`'s MLPEngine (Amaranth simulator) on `tokens` random tokens with random
    output stalls; UserError unless every count equals golden.counts. Returns the token count."""
    engine = MLPEngine(block, registers=registers)
    rng = np.random.default_rng(seed)
    lo, hi = signed_range(block.bits)
    q = rng.integers(lo, hi + 1, (tokens, block.d))
    try:
        got, _ = simulate(engine, q, ready_prob=0.8, seed=seed)
    except RuntimeError as e:  # tokens lost: the engine disagrees with the golden model
        raise UserError(f"simulation of block {block.name!r}: {e}") from None
    bad = int((got != golden.counts(block, q)).any(axis=1).sum())
    if bad:
        raise UserError(f"simulation of block {block.name!r} disagrees with the golden model on {bad} of {tokens} tokens")
    return tokens


def simulate_model(engine, pixels, *, valid_prob=1.0, ready_prob=1.0, seed=0):
    """Run a ModelEngine in Amaranth's simulator on uint8 images (B, C, H, W), with gaps in the
    pixel stream and stalls on the output: (logits (B, classes) int64, labels (B,), trace) where
    trace = {"compute_cycles": clocks from each image's last pixel to its o.valid, "cycles_port":
    the engine's `cycles` output after each image}."""
    from amaranth.sim import Simulator

    pixels = np.asarray(pixels)
    rng = np.random.default_rng(seed)
    limit = engine.cycles_per_image * 4 + 1000
    logits, labels, compute, reported = [], [], [], []

    async def bench(ctx):
        for image in pixels:
            values = [int(v) for v in image.reshape(-1)]
            index = 0
            while index < len(values):
                offer = bool(rng.random() < valid_prob)
                ctx.set(engine.i.valid, offer)
                ctx.set(engine.i.payload, values[index])
                _, _, ready = await ctx.tick().sample(engine.i.ready)
                index += int(offer and ready)
            ctx.set(engine.i.valid, 0)
            cycles = 0
            while True:
                take = bool(rng.random() < ready_prob)
                ctx.set(engine.o.ready, take)
                _, _, valid, payload = await ctx.tick().sample(engine.o.valid, engine.o.payload)
                if valid and not compute[len(logits):]:
                    compute.append(cycles)
                cycles += 1
                if valid and take:
                    break
                if cycles > limit:
                    raise RuntimeError(f"no result for image {len(logits)} within {limit} cycles")
            ctx.set(engine.o.ready, 0)
            logits.append([int(payload.logits[k]) for k in range(len(payload.logits))])
            labels.append(int(payload.label))
            reported.append(ctx.get(engine.cycles))

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    for name, register, expected in getattr(engine, "invariants", []):
        sim.add_testbench(_invariant(name, register, expected), background=True)
    sim.run()
    return np.array(logits, np.int64), np.array(labels, np.int64), {"compute_cycles": compute, "cycles_port": reported}


def _invariant(name, register, expected):
    """A background testbench that fails the simulation at the first clock where `register`
    differs from `expected` (an engine's register that stands for an expression of others)."""
    async def watch(ctx):
        cycle = 0
        async for _, _, got, want in ctx.tick().sample(register, expected):
            if got != want:
                raise AssertionError(f"{name}: {got} where {want} is expected, clock {cycle}")
            cycle += 1
    return watch

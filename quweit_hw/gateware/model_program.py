"""The whole-model engine's program: a version-2 integer model as instructions and ROM contents.

`compile_program(program, lanes)` turns the integer program of `contract.golden_model` into
what `model_engine.ModelEngine` runs: a list of `Instruction`s (one per operation, in the
golden model's order; the attention's scores, softmax and context one each per head, over
all query tokens), the weight ROM (MAC-array words), the per-channel parameter ROM (bias,
multiplier, shift, gain) and the GELU tables, and the exact number of cycles each
instruction takes. Plain Python and numpy: no amaranth here, so
the cycle figure can be computed, and checked, without building the hardware.

Memories of the engine (element = one value; "wide" memories hold `lanes` values per word,
the operand word of the MAC array):

    PIX  (N, C*p*p) int8   patches of (pixel - 128), written as the image arrives
    X    (T, d)     int16  the residual stream
    H    (T, d)     int8   LayerNorm outputs that feed a matrix product
    HT   (T,)       d x b  LayerNorm outputs that feed a LUT-MLP engine, one token per word
    Q    (T, d)     int8   queries
    K    wide: word (h*dh + i)*GT + t // lanes, lane t % lanes   keys, lanes over tokens
    V    wide: word (h*T + t)*GD + j // lanes, lane j % lanes    values, lanes over channels
    CTX  (T, d)     int8   attention context
    G    (T, 4d)    int8   dense MLP hidden activations (after the GELU table)
    SC   2 x (T, T) int    a head's attention scores (query row, key), two buffers;  P likewise, uint8,
                           their probabilities;  SC_MAX 2 x (T,) each score row's maximum
"""

from dataclasses import dataclass, fields

import numpy as np

from ..contract import integer as I
from ..contract.golden_model import LOGIT_BITS, RESIDUAL_BITS
from ..errors import UserError

# instruction kinds
MAC, LAYERNORM, SOFTMAX, LUT, FILL = range(5)
KIND_NAMES = ("mac", "layernorm", "softmax", "lut", "fill")
# post-op modes: REQ saturate(requant) to `bits`; ADD the residual add into X; RAW the
# accumulator itself (scores); GELU requant to int8 then the table; LOGIT requant to 16 bits
REQ, ADD, RAW, GELU, LOGIT = range(5)
# MAC operand sources
A_PIX, A_H, A_Q, A_P, A_CTX, A_G = range(6)
B_W, B_K, B_V = range(3)
# post-op destinations
D_X, D_H, D_HT, D_Q, D_K, D_V, D_CTX, D_G, D_SC, D_LOG = range(10)

# the units' latencies live with the units (model_units.post_latency, MACArray.LATENCY, the
# LayerNorm and softmax units' row_cycles); model_engine.instruction_cycles adds them up


@dataclass(frozen=True)
class Instruction:
    """One operation; the fields a kind does not use are 0. Addresses are in elements of the
    memory named (words for the wide K and V memories and the weight ROM)."""

    kind: int
    rows: int = 0       # rows r = 0 .. rows-1 (tokens), or (t, h) work of one row
    O: int = 0          # outputs per row (channels, keys)
    K: int = 0          # reduction length of a MAC
    a_src: int = 0
    a_base: int = 0     # A element: a_base + r * a_stride + k
    a_stride: int = 0
    b_src: int = 0
    b_base: int = 0     # B word: b_base + g * b_gstride + k * b_kstride (group g of lanes)
    b_gstride: int = 0
    b_kstride: int = 0
    p_base: int = 0     # parameter entry: p_base + o + r * p_rstride
    p_rstride: int = 0
    mode: int = 0
    bits: int = 8       # saturation width of REQ
    use_g: int = 0      # post-op multiplies its input by the entry's gain g first
    dest: int = 0
    d_base: int = 0     # destination word: d_base + (r >> d_rsh) * d_rmul + (o >> d_osh) * d_omul
    d_rsh: int = 0
    d_rmul: int = 0
    d_osh: int = 0
    d_omul: int = 0
    d_rmask: int = 0    # lane: (r & d_rmask) | (o & d_omask)
    d_omask: int = 0
    x_row: int = 0      # LAYERNORM: first X row read; LUT: engine index
    imm_m: int = 0      # SOFTMAX: the row's dyadic multiplier
    imm_s: int = 0
    g_base: int = 0     # GELU: table base
    buf: int = 0        # SOFTMAX and the scores: which of the two SC/P buffers
    after_softmax: int = 0  # wait until the softmax unit is idle before starting


FIELD_NAMES = tuple(f.name for f in fields(Instruction))


@dataclass
class CompiledModel:
    """Everything the engine is built from; `cycles` per instruction, exactly."""

    config: dict
    lanes: int
    T: int
    N: int
    d: int
    heads: int
    dh: int
    hidden: int
    patch_len: int
    classes: int
    instructions: list
    weights: list        # weight ROM: one list of `lanes` int8 per word
    params: list         # parameter ROM: (bias, m, s, g) per entry
    gelu: list           # GELU tables, 256 int8 each, concatenated
    lut_blocks: list     # contract Block per LUT-MLP block, in engine index order
    token_bits: list     # LayerNorm output width (b) per LUT block
    pre_bits: int        # width of the post-op's input
    acc_bits: int        # width of a MAC lane accumulator
    score_bits: int

    @property
    def GT(self):
        return -(-self.T // self.lanes)

    @property
    def GD(self):
        return -(-self.dh // self.lanes)


def _bits_for(bound):
    """Signed width that holds every integer of magnitude <= bound."""
    return int(bound).bit_length() + 1


class _Builder:
    def __init__(self, lanes):
        self.lanes = lanes
        self.weights, self.params, self.gelu = [], [], []
        self.instructions = []

    def weight_block(self, w):
        """w (O, K) int -> the ROM base of its lane words: word base + g*K + k, lane l = w[g*lanes + l, k]."""
        w = np.asarray(w, np.int64)
        O, K = w.shape
        base = len(self.weights)
        for g in range(-(-O // self.lanes)):
            rows = w[g * self.lanes:(g + 1) * self.lanes]
            for k in range(K):
                word = [0] * self.lanes
                word[:len(rows)] = [int(v) for v in rows[:, k]]
                self.weights.append(word)
        return base

    def param_block(self, n, bias=0, m=1, s=0, g=0):
        """n parameter entries; each of bias, m, s, g a scalar or a length-n sequence."""
        base = len(self.params)
        cols = [np.broadcast_to(np.asarray(v, np.int64).reshape(-1) if np.ndim(v) else np.int64(v), (n,))
                for v in (bias, m, s, g)]
        self.params += [tuple(int(c[i]) for c in cols) for i in range(n)]
        return base

    def emit(self, **kw):
        self.instructions.append(Instruction(**kw))


def _scalar_dest(dest, base, row_stride):
    return dict(dest=dest, d_base=base, d_rmul=row_stride, d_omul=1)


class _Compiler(_Builder):
    """The instructions of one program, op by op in the golden model's order."""

    def __init__(self, cfg, lanes):
        super().__init__(lanes)
        self.d, self.heads, p = cfg["d"], cfg["heads"], cfg["patch"]
        self.N = (cfg["image_size"] // p) ** 2
        self.T, self.dh, self.Kp = self.N + 1, self.d // self.heads, cfg.get("channels", 1) * p * p
        self.logw = lanes.bit_length() - 1
        self.GT, self.GD = -(-self.T // lanes), -(-self.dh // lanes)
        self.zeros = self.param_block(max(self.T, self.dh))  # bias 0, m 1, s 0: the scores' RAW entries
        self.lut_blocks, self.token_bits = [], []

    def linear(self, x_src, x_stride, lin, rows, mode, bits=8, p_rows=1, **dst):
        """A MAC instruction x @ w^T (+ b) with per-channel (m, s); p_rows > 1: a bias per row too."""
        w = np.asarray(lin["w"])
        O, K = w.shape
        pb = self.param_block(O * p_rows, np.asarray(lin["b"]).reshape(-1), np.tile(lin["m"], p_rows),
                              np.tile(lin["s"], p_rows))
        self.emit(kind=MAC, rows=rows, O=O, K=K, a_src=x_src, a_stride=x_stride, b_src=B_W,
                  b_base=self.weight_block(w), b_gstride=K, b_kstride=1, p_base=pb,
                  p_rstride=O if p_rows > 1 else 0, mode=mode, bits=bits, **dst)

    def layernorm(self, ln, rows, **dst):
        pb = self.param_block(self.d, ln["b"], ln["m"], ln["s"], ln["g"])
        self.emit(kind=LAYERNORM, rows=rows, O=self.d, p_base=pb, mode=REQ, bits=int(ln["bits"]), use_g=1, **dst)

    def embed(self, e):
        """The class token into X row 0, then the patches' linear map with a bias per position."""
        d, row0 = self.d, 0
        if e["cls"] is not None:
            self.emit(kind=FILL, rows=1, O=d, p_base=self.param_block(d, e["cls"]), mode=REQ, bits=RESIDUAL_BITS,
                      **_scalar_dest(D_X, 0, d))
            row0 = 1
        self.linear(A_PIX, self.Kp, e, self.N, REQ, RESIDUAL_BITS, p_rows=self.N, **_scalar_dest(D_X, row0 * d, d))

    def attention(self, blk):
        d, T, dh, lanes = self.d, self.T, self.dh, self.lanes
        self.layernorm(blk["ln1"], T, **_scalar_dest(D_H, 0, d))
        qkv = blk["qkv"]
        part = lambda lo, hi: {k: np.asarray(qkv[k])[lo:hi] for k in ("w", "b", "m", "s")}
        self.linear(A_H, d, part(0, d), T, REQ, **_scalar_dest(D_Q, 0, d))
        # keys, lanes over tokens: channel o of token t in word o*GT + t // lanes, lane t % lanes
        self.linear(A_H, d, part(d, 2 * d), T, REQ, dest=D_K, d_rsh=self.logw, d_rmul=1, d_omul=self.GT,
                    d_rmask=lanes - 1)
        # values, lanes over a head's channels: word (h*T + t)*GD + j // lanes, lane j % lanes
        if dh & (dh - 1) == 0 and dh <= lanes:  # one instruction: h = o >> log2(dh), j = o % dh
            self.linear(A_H, d, part(2 * d, 3 * d), T, REQ, dest=D_V, d_rmul=1, d_osh=dh.bit_length() - 1, d_omul=T,
                        d_omask=dh - 1)
        else:
            for h in range(self.heads):
                self.linear(A_H, d, part(2 * d + h * dh, 2 * d + (h + 1) * dh), T, REQ, dest=D_V,
                            d_base=h * T * self.GD, d_rmul=self.GD, d_osh=self.logw, d_omul=1, d_omask=lanes - 1)
        ctx_params = self.param_block(dh, 0, blk["ctx"]["m"], blk["ctx"]["s"])
        # per head, every query token: scores, softmax, context. The softmax runs beside the
        # MAC array (the sequencer starts it and goes on), so head h's softmax overlaps head
        # h-1's context and head h+1's scores, in the other of two SC/P buffers
        score = lambda h: self.emit(kind=MAC, rows=T, O=T, K=dh, a_src=A_Q, a_base=h * dh, a_stride=d, b_src=B_K,
                                    b_base=h * dh * self.GT, b_gstride=1, b_kstride=self.GT, p_base=self.zeros,
                                    mode=RAW, buf=h % 2, **_scalar_dest(D_SC, h % 2 * T * T, T))
        context = lambda h, wait: self.emit(kind=MAC, rows=T, O=dh, K=T, a_src=A_P, a_base=h % 2 * T * T, a_stride=T,
                                            b_src=B_V, b_base=h * T * self.GD, b_gstride=1, b_kstride=self.GD,
                                            p_base=ctx_params, mode=REQ, after_softmax=wait,
                                            **_scalar_dest(D_CTX, h * dh, d))
        score(0)
        for h in range(self.heads):
            self.emit(kind=SOFTMAX, rows=T, O=T, buf=h % 2, imm_m=int(blk["softmax"]["m"]),
                      imm_s=int(blk["softmax"]["s"]))
            if h > 0:
                context(h - 1, 0)  # its softmax ended before this one started
            if h + 1 < self.heads:
                score(h + 1)
        context(self.heads - 1, 1)
        self.linear(A_CTX, d, blk["proj"], T, ADD, RESIDUAL_BITS, **_scalar_dest(D_X, 0, d))

    def mlp(self, blk):
        d, T, mlp = self.d, self.T, blk["mlp"]
        if mlp["kind"] == "dense":
            self.layernorm(blk["ln2"], T, **_scalar_dest(D_H, 0, d))
            hidden = np.asarray(mlp["fc"]["w"]).shape[0]
            g_base = len(self.gelu)
            self.gelu += [int(v) for v in np.asarray(mlp["gelu"]).reshape(-1)]
            self.linear(A_H, d, mlp["fc"], T, GELU, g_base=g_base, **_scalar_dest(D_G, 0, hidden))
            self.linear(A_G, hidden, mlp["proj"], T, ADD, RESIDUAL_BITS, **_scalar_dest(D_X, 0, d))
        else:  # one token per HT word: feature o in lane o
            self.layernorm(blk["ln2"], T, dest=D_HT, d_rmul=1, d_omask=(1 << d.bit_length()) - 1)
            a = mlp["affine"]
            self.emit(kind=LUT, rows=T, O=d, x_row=len(self.lut_blocks), mode=ADD, bits=RESIDUAL_BITS, use_g=1,
                      p_base=self.param_block(d, a["b"], a["m"], a["s"], a["a"]), **_scalar_dest(D_X, 0, d))
            self.lut_blocks.append(mlp["block"])
            self.token_bits.append(int(blk["ln2"]["bits"]))

    def head(self, program):
        self.layernorm(program["ln_f"], 1, **_scalar_dest(D_H, 0, self.d))  # the class token's row only
        self.linear(A_H, self.d, program["head"], 1, LOGIT, LOGIT_BITS, dest=D_LOG, d_omul=1)


def compile_program(program, lanes=16):
    """The ModelEngine program of an integer program (contract.golden_model). UserError for a
    model the engine does not support (mean pooling, lanes not a power of two)."""
    if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 2 or lanes & (lanes - 1):
        raise UserError(f"the MAC array width must be a power of two >= 2, got {lanes!r}")
    cfg = program["config"]
    if cfg["pool"] != "cls":
        raise UserError(f"the model engine supports class-token pooling only; this model pools by {cfg['pool']!r}")
    if cfg["d"] < 2:  # the LUT hand-off takes the next word while the second-last count leaves
        raise UserError(f"the model engine needs a model width d >= 2, got {cfg['d']}")
    B = _Compiler(cfg, lanes)
    B.embed(program["embed"])
    for blk in program["blocks"]:
        B.attention(blk)
        B.mlp(blk)
    B.head(program)
    d, T = B.d, B.T
    hidden = max([np.asarray(b["mlp"]["fc"]["w"]).shape[0] for b in program["blocks"] if b["mlp"]["kind"] == "dense"],
                 default=0)
    acc_bound = max(B.Kp, d, hidden) * 128 * 128 + T * 255 * 128
    z_bound = 2 * (int(np.sqrt(d)) + 1) * (1 << I.LN_FRAC_BITS) + 1   # contract.integer.layernorm's |z| bound
    count_bound = max([1 << b.count_width for b in B.lut_blocks], default=0)
    return CompiledModel(config=dict(cfg), lanes=lanes, T=T, N=B.N, d=d, heads=B.heads, dh=B.dh, hidden=hidden,
                         patch_len=B.Kp, classes=cfg["classes"], instructions=B.instructions, weights=B.weights,
                         params=B.params, gelu=B.gelu or [0], lut_blocks=B.lut_blocks, token_bits=B.token_bits,
                         pre_bits=max(_bits_for(acc_bound), _bits_for(z_bound), _bits_for(count_bound), RESIDUAL_BITS),
                         acc_bits=_bits_for(acc_bound), score_bits=_bits_for(B.dh * 128 * 128))  # |q . k|


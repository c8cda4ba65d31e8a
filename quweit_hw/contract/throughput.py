"""The whole model's throughput figures for the build report: on chip (cycles per image at an
Fmax) and over the UART (frame bytes at a baud rate), plus what `quweit_hw.model_throughput`
measured on this machine's CPU; `throughput_fields` returns them ready for report.json,
`throughput_markdown` as a fragment of report.md. Arithmetic only (no numpy, no torch), so
the gateware's build report uses it.

UART frames (docs/uart-protocol.md, version 2): one image's request (IMAGE) is header +
pixels + CRC, its reply header + the class byte + the cycle counter (4 bytes) + the int32
logits + CRC; both sizes are parameters. 8N1 puts 10 bits on the wire per byte. The link is
full duplex: streamed, requests and replies overlap and the larger frame sets the rate; one
image at a time (a request, then its reply) the two frames add up.
"""

from .protocol import HEADER_BYTES

CRC_BYTES = 2
UART_BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit


def request_frame_bytes(pixels):
    """Bytes of one image's request frame: header, the uint8 pixels, the CRC."""
    return HEADER_BYTES + pixels + CRC_BYTES


def reply_frame_bytes(classes):
    """Bytes of one image's reply frame: header, classes x int32 logits, the class, the cycle counter, the CRC."""
    return HEADER_BYTES + 4 * classes + 1 + 4 + CRC_BYTES


def chip_figures(cycles_per_image, fmax_hz):
    """{"images_per_s", "latency_us"} of one engine at `fmax_hz`; both None when Fmax is
    unknown (no post-route figure yet), never a guess."""
    if cycles_per_image <= 0:
        raise ValueError(f"cycles_per_image must be positive, got {cycles_per_image!r}")
    if not fmax_hz:
        return {"images_per_s": None, "latency_us": None}
    return {"images_per_s": fmax_hz / cycles_per_image, "latency_us": cycles_per_image / fmax_hz * 1e6}


def uart_figures(baud, request_bytes, reply_bytes, bits_per_byte=UART_BITS_PER_BYTE):
    """Images/s the UART carries at `baud`: streamed (full duplex, the larger frame sets the
    pace) and one image at a time (request then reply); None for both when baud is unknown."""
    if request_bytes <= 0 or reply_bytes <= 0:
        raise ValueError(f"frame sizes must be positive, got {request_bytes!r} and {reply_bytes!r}")
    if not baud:
        return {"images_per_s_streamed": None, "images_per_s_one_at_a_time": None}
    return {"images_per_s_streamed": baud / (bits_per_byte * max(request_bytes, reply_bytes)),
            "images_per_s_one_at_a_time": baud / (bits_per_byte * (request_bytes + reply_bytes))}


def throughput_fields(cycles_per_image, *, pixels, classes, fmax_hz=None, baud=None, cpu=None,
                      request_bytes=None, reply_bytes=None):
    """The report's throughput fields as JSON-ready data: cycles per image; images/s and
    latency (us) at `fmax_hz` (None when unknown); the UART's images/s at `baud` with the
    frame sizes (defaults: request_frame_bytes, reply_frame_bytes); `cpu` as measured by
    cpu_images_per_second (None: not measured)."""
    request_bytes = request_frame_bytes(pixels) if request_bytes is None else request_bytes
    reply_bytes = reply_frame_bytes(classes) if reply_bytes is None else reply_bytes
    return {"cycles_per_image": cycles_per_image,
            "fmax_mhz": fmax_hz / 1e6 if fmax_hz else None,
            "chip": chip_figures(cycles_per_image, fmax_hz),
            "uart": {"baud": baud, "request_bytes": request_bytes, "reply_bytes": reply_bytes,
                     "bits_per_byte": UART_BITS_PER_BYTE, **uart_figures(baud, request_bytes, reply_bytes)},
            "cpu": cpu}


def _rate(value, unit="images/s"):
    return "n/a" if value is None else f"{value:,.0f} {unit}"


def throughput_markdown(fields):
    """A report.md fragment (a heading and a table) of `throughput_fields`' output."""
    chip, uart, cpu = fields["chip"], fields["uart"], fields["cpu"]
    fmax = "Fmax unknown" if fields["fmax_mhz"] is None else f"{fields['fmax_mhz']:.2f} MHz"
    latency = "n/a" if chip["latency_us"] is None else f"{chip['latency_us']:,.1f} us"
    baud = "baud unknown" if uart["baud"] is None else f"{uart['baud']:,} baud"
    rows = [("on chip, " + fmax, _rate(chip["images_per_s"]), f"{fields['cycles_per_image']:,} cycles per image, "
             f"latency {latency}"),
            (f"UART, {baud}, streamed", _rate(uart["images_per_s_streamed"]),
             f"frames of {uart['request_bytes']:,} bytes in and {uart['reply_bytes']:,} out, "
             f"{uart['bits_per_byte']} bits per byte"),
            (f"UART, {baud}, one image at a time", _rate(uart["images_per_s_one_at_a_time"]), "request, then reply")]
    if cpu is not None:
        runs = f"batch {cpu['batch']}, median of {cpu['repeats']} runs over {cpu['images']:,} images"
        rows += [("golden model (numpy), this CPU", _rate(cpu["golden"]), runs),
                 ("torch integer eval, 1 thread", _rate(cpu["torch_1_thread"]), runs),
                 (f"torch integer eval, default threads ({cpu['torch_default_threads_n'] or 'n/a'})",
                  _rate(cpu["torch_default_threads"]), runs)]
    lines = ["### Throughput (whole model)", "", "| where | images/s | notes |", "| --- | ---: | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"

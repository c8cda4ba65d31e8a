"""Host side of the whole-model top (protocol version 2, docs/uart-protocol.md): `ModelLink`,
the board backend of `eval BUNDLE --backend board`, and its batch benchmark."""

import time

import numpy as np

from .contract import golden_model, protocol
from .contract.protocol import MODEL_PROTOCOL_VERSION, ModelInfo, ModelResult
from .errors import UserError
from .host import FramedLink, LinkError


class ModelLink(FramedLink):
    """The whole-model top's link: INFO, IMAGE, LOAD and BENCH (`FramedLink` for the port,
    the window of frames in flight and the retries)."""

    def info(self):
        """The board's ModelInfo (cached after the first call)."""
        if self._info is None:
            self._info = ModelInfo.decode(self.info_payload(MODEL_PROTOCOL_VERSION))
        return self._info

    def _images(self, pixels):
        """`pixels` as (N, pixels) uint8, checked against the board's image size."""
        info = self.info()
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.size % info.pixels or (pixels.ndim > 1 and pixels[0].size != info.pixels):
            raise UserError(f"images must be uint8 of {info.pixels} pixels each ({info.channels} x "
                            f"{info.image_size} x {info.image_size}), got {pixels.dtype} {pixels.shape}")
        return pixels.reshape(-1, info.pixels)

    def classify(self, pixels, chunk=256, progress=None):
        """(logits (N, classes) int64, labels (N,), cycles (N,)) of images `pixels` (N, C, H, W)
        uint8, one IMAGE frame each; `progress(n)` after each chunk of images."""
        info, images = self.info(), self._images(pixels)
        out = []
        for start in range(0, len(images), chunk):
            replies = self.transact([protocol.image_frame(p) for p in images[start:start + chunk]],
                                    protocol.REPLY_IMAGE, " (IMAGE)")
            out += [ModelResult.decode(r.payload, info.classes) for r in replies]
            if progress:
                progress(len(replies))
        logits = np.array([r.logits for r in out], np.int64).reshape(-1, info.classes)
        return logits, np.array([r.label for r in out], np.int64), np.array([r.cycles for r in out], np.int64)

    def load(self, pixels):
        """Put images `pixels` (n <= batch) into the board's batch slots 0 .. n-1."""
        info, images = self.info(), self._images(pixels)
        if not 1 <= len(images) <= info.batch:
            raise UserError(f"the board's batch memory holds 1 to {info.batch} images, got {len(images)}")
        replies = self.transact([protocol.load_frame(k, p) for k, p in enumerate(images)], protocol.REPLY_LOADED,
                                " (LOAD)")
        if [r.payload for r in replies] != [bytes([k]) for k in range(len(images))]:
            raise LinkError("the board acknowledged other batch slots than those loaded")

    def bench(self, images, repeats, timeout=None):
        """(total engine cycles, logits checksum) of BENCH: slots 0 .. images-1 run `repeats`
        times. The reply waits for the run: `timeout` seconds (default: the link's, plus the
        run's time at the engine clock from the generator's cycle figure, twice over)."""
        info = self.info()
        run_s = 2 * images * repeats * (info.cycles_per_image + info.pixels) / max(info.engine_clock_hz, 1)
        saved, self.timeout = self.timeout, timeout or self.timeout + run_s
        try:
            reply, = self.transact([protocol.bench_frame(images, repeats)], protocol.REPLY_BENCH, " (BENCH)")
        finally:
            self.timeout = saved
        return protocol.decode_bench(reply.payload)


def check_board_bundle(link, manifest, bundle_path):
    """UserError unless the board on `link` carries the version 2 bundle of `manifest`."""
    from .contract.model_bundle import model_board_id

    info, expected = link.info(), model_board_id(manifest)
    if info.bundle_id != expected:
        raise UserError(f"the board carries another model (id {info.bundle_id:08x}, expected {expected:08x} for "
                        f"{str(bundle_path)!r}): rebuild or reprogram")
    return info


def board_logits(link, pixels, progress=None):
    """(logits, labels, cycles, figures) of `pixels` on the board; figures: images/s over the link."""
    start = time.perf_counter()
    logits, labels, cycles = link.classify(pixels, progress=progress)
    seconds = time.perf_counter() - start
    return logits, labels, cycles, {"seconds": round(seconds, 3), "images_per_second": len(pixels) / seconds}


def board_bench(link, program, pixels, repeats):
    """The board's batch benchmark on `pixels` (n <= the board's batch): load them, run them
    `repeats` times back to back, check the checksum against the golden model. Returns
    {"images", "cycles", "cycles_per_image", "images_per_second", "latency_us", "checksum_ok"}
    at the board's engine clock."""
    info = link.info()
    link.load(pixels)
    cycles, checksum = link.bench(len(pixels), repeats)
    expected = protocol.bench_checksum(golden_model.logits(program, pixels), repeats)
    images = len(pixels) * repeats
    hz = info.engine_clock_hz
    return {"images": images, "cycles": cycles, "cycles_per_image": cycles / images, "engine_clock_hz": hz,
            "images_per_second": images * hz / cycles if hz else None,
            "latency_us": info.cycles_per_image / hz * 1e6 if hz else None, "checksum_ok": checksum == expected}

"""How many images each pass over the calibration data takes, and so how many a build loads.

Four passes draw on the calibration images: the activation ranges (the first --calib-samples of
one seeded shuffle), the INT8-vs-FP32 check (the images after them in that shuffle), BatchNorm
recalibration (the first images of the build's seeded shuffle) and the pruned model's agreement
check (the images after those). Each takes fewer images for an expensive model, so the build
loads only as many as the largest of them reaches: a ResNet-18 at 224 loaded, resized and
hashed 1,408 images at 3x224x224 (0.85 GB: 17-20 s of a profiled build while NumPy's huge-page
faults were slow, see hadmc_deploy/hugepages.py; the load alone 2.1-2.2 s without them,
tools/bench_hugepages.py) for passes that read 666.
One module because `build/inputs.py` sizes the load and the stages size their passes from the
same numbers.
"""

from __future__ import annotations

from hadmc_deploy.build.fidelity import MIN_PRUNED_AGREEMENT
from hadmc_deploy.vouch import images_to_vouch

#: calibration images loaded beyond the ones the ranges see: as far as the passes above reach (for a
#: small model BatchNorm's 1,024 and the agreement check's 1,024 past them), but at most this many
#: bytes of them, preprocessed (float32). Loading the whole source instead preprocessed all 60,000
#: Fashion-MNIST images to 3x224x224 float32 for a ResNet-18 build (36 GB) and was killed for memory;
#: 4,096 extra (2.5 GB at 224) spent 12 s loading and 8 s hashing of a ResNet-18 build. An expensive
#: model's passes stop well before the cap (see below).
CALIB_BEYOND_BYTES = 1 << 30

#: calibration images BatchNorm statistics are re-estimated on when no --train is given (a plain
#: average over 8 batches of 128: 2048 took 27 s of a 5-minute ResNet-18 build at 224), at most...
BN_CALIB_SAMPLES = 1024
#: ... and at least, when the pruned model is expensive: the forward passes stop near BN_CALIB_MACS
#: multiply-adds (1,024 images through a pruned ResNet-18 at 224, 0.8 GMACs each, took 16 s of a
#: build). Each image gives every channel H x W values, so 256 images still average over 12,544
#: per channel at the last 7x7 stage; small inputs keep all 1,024.
BN_CALIB_MIN_SAMPLES = 256
BN_CALIB_MACS = 3e11

#: held-out calibration samples INT8 is compared with FP32 on when labelled --eval data judges the
#: guard (the comparison is then recorded, not judged), fewer for an expensive model: both graphs
#: over 256 images took 12 s of a ResNet-18 build at 224 per model; the passes stop near
#: VERIFY_MACS multiply-adds of the float model, never under 128 images. Without labels the
#: comparison is the guard and takes as many as the pruned model's check, 473 at least
#: (MIN_INT8_GUARD_SAMPLES): 128 images cannot vouch for a 1-point loss even when all agree.
VERIFY_SAMPLES = 256
VERIFY_MACS = 1e11
MIN_VERIFY_SAMPLES = 128

#: images the pruned model's agreement check compares at most, and at least: the fewest that can
#: vouch for a disagreement below the 1-point guard when all agree (build/fidelity.py; 299 at 95%).
#: A small CNN takes all 1,024 (4 disagreements may pass there), an expensive model the fewest.
MAX_CHECK_SAMPLES = 1024
MIN_CHECK_SAMPLES = images_to_vouch(1.0 - MIN_PRUNED_AGREEMENT)
#: held-out images the INT8 check compares at least when it is the guard (no labels): as many as
#: still vouch for a 1-point loss with one image's worth lost. INT8's losses are fractions of an
#: image (flips between near-tied classes), never exactly none: at the 299 that vouch only when
#: nothing is lost, a random-weight ResNet-18's pruned INT8 graph, expected to lose 0.00 points,
#: failed, and the guard's repair spent 60 s of the build on it.
MIN_INT8_GUARD_SAMPLES = images_to_vouch(1.0 - MIN_PRUNED_AGREEMENT, lost=1.0)
#: multiply-adds of the original's forward passes the check aims at: 1,024 images of a small CNN,
#: the 299 at least of a ResNet-18 at 224 (1.8 GMACs each: 8.1 s on 2 cores for the original and
#: issue 13's pruned model together, scratch /tmp/exp16/check_cost.py, when the pruned model agrees;
#: one that does not is stopped as soon as it fails)
CHECK_MACS = 2e11


def samples_within(macs_per_sample: int | None, *, most: int, least: int, macs_budget: float) -> int:
    """How many images a pass over data should take: `most`, fewer when they would cost more than
    `macs_budget` multiply-adds, never fewer than `least` (unknown cost: `most`)."""
    if not macs_per_sample:
        return most
    return int(min(most, max(least, macs_budget // macs_per_sample)))


def bn_calib_samples(macs_per_sample: int | None) -> int:
    """Images BatchNorm recalibration runs when there is no --train: all BN_CALIB_SAMPLES unless the
    model is so expensive that they would cost more than BN_CALIB_MACS."""
    return samples_within(macs_per_sample, most=BN_CALIB_SAMPLES, least=BN_CALIB_MIN_SAMPLES, macs_budget=BN_CALIB_MACS)


def verify_samples(macs_per_sample: int | None, *, guarding: bool = False) -> int:
    """Held-out samples the INT8 check runs: VERIFY_SAMPLES unless the float model makes them cost
    more than VERIFY_MACS; when the check is the guard itself (`guarding`: a classifier built
    without labelled --eval data), up to MAX_CHECK_SAMPLES within CHECK_MACS, never fewer than
    MIN_INT8_GUARD_SAMPLES."""
    if guarding:
        return samples_within(macs_per_sample, most=MAX_CHECK_SAMPLES, least=MIN_INT8_GUARD_SAMPLES, macs_budget=CHECK_MACS)
    return samples_within(macs_per_sample, most=VERIFY_SAMPLES, least=MIN_VERIFY_SAMPLES, macs_budget=VERIFY_MACS)


def check_samples(macs_per_sample: int | None) -> int:
    """Images the agreement check compares: MAX_CHECK_SAMPLES unless the original's passes would cost more than CHECK_MACS."""
    return samples_within(macs_per_sample, most=MAX_CHECK_SAMPLES, least=MIN_CHECK_SAMPLES, macs_budget=CHECK_MACS)


def calib_images_to_load(calib_samples: int, original_macs: int | None, pruned_macs: int | None, *, recovery_reads: bool = True,
                         image_bytes: int | None = None, int8_guarding: bool = False) -> int:
    """Calibration images a build loads: as far as the furthest pass reaches (the ranges and the
    INT8 check: `calib_samples` + its held-out images; with `recovery_reads`, BatchNorm and the
    agreement check on the images after BatchNorm's), never more than CALIB_BEYOND_BYTES of images
    of `image_bytes` beyond `calib_samples`. `int8_guarding`: the INT8 check is the guard
    (`verify_samples`).
    Per-image multiply-adds of the original and the pruned model (None where not known yet: the
    most images that pass would take)."""
    reach = calib_samples + verify_samples(original_macs, guarding=int8_guarding)
    if recovery_reads:
        reach = max(reach, bn_calib_samples(pruned_macs) + check_samples(original_macs))
    if image_bytes:
        reach = min(reach, calib_samples + max(1, CALIB_BEYOND_BYTES // image_bytes))
    return reach


#: the share of the memory available when a --train or --eval set is loaded that its preprocessed
#: images may take: training copies its share again (the held-out split), and the calibration images,
#: the models and the sessions need the rest. Fashion-MNIST's 60,000 training images preprocessed
#: for a ResNet-18 at 3x224x224 are 36 GB, more than these 24 GiB machines have.
DATA_MEMORY_SHARE = 0.25


def images_in_memory(available_bytes: int | None, image_bytes: int) -> int | None:
    """How many preprocessed images of `image_bytes` a --train or --eval set may hold (None: no limit known)."""
    if not available_bytes or image_bytes <= 0:
        return None
    return max(1, int(available_bytes * DATA_MEMORY_SHARE) // image_bytes)

"""bench/quality.py's detailed-operating-point check, on made-up evaluations."""

from bench import quality


def evaluation(**tasks):
    """eval/<task>/psnr and, where given, eval/<task>/sharpness."""
    out = {}
    for task, (psnr, sharp) in tasks.items():
        out[f"eval/{task}/psnr"] = psnr
        if sharp is not None:
            out[f"eval/{task}/sharpness"] = sharp
    return out


def test_detailed_point_needs_the_band_and_at_most_three_db_under_one_step():
    one = evaluation(denoise=(27.0, 0.99), super_resolve=(32.3, 0.51), colorize=(18.0, None))
    rows = quality.detailed_rows(one, evaluation(denoise=(26.6, 0.93),
                                                 super_resolve=(30.3, 0.77),
                                                 colorize=(18.4, None)), 16)
    assert [(r["task"], r["met"]) for r in rows] == [("denoise", True), ("super_resolve", True)]
    assert abs(rows[1]["drop_db"] - 2.0) < 1e-9 and rows[1]["metric"] == "sharp@16"
    cases = {(29.2, 0.80): False,  # 3.1 dB under its one step
             (30.3, 0.74): False,  # below the band: the blur of a mean
             (30.3, 1.40): False,  # above it: leftover noise
             (29.3, 1.33): True}  # both edges count
    for (psnr, sharp), met in cases.items():
        row = quality.detailed_rows(one, evaluation(super_resolve=(psnr, sharp)), 16)[0]
        assert row["met"] is met, (psnr, sharp)

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


# PSNRs in halves of a dB: the differences below are exact in binary floating point.
ONE_STEP = evaluation(denoise=(27.0, 0.99), super_resolve=(32.5, 0.51), colorize=(18.0, None))


def test_detailed_point_reports_each_task_with_a_sharpness():
    rows = quality.detailed_rows(ONE_STEP, evaluation(denoise=(26.5, 0.93),
                                                      super_resolve=(30.5, 0.77),
                                                      colorize=(18.5, None)), 16)
    assert [(r["task"], r["met"]) for r in rows] == [("denoise", True), ("super_resolve", True)]
    assert rows[1]["drop_db"] == 2.0 and rows[1]["metric"] == "sharp@16"


def test_detailed_point_needs_the_band_and_at_most_three_db_under_one_step():
    cases = {(29.0, 0.80): False,  # 3.5 dB under its one step
             (30.5, 0.74): False,  # below the band: the blur of a mean
             (30.5, 1.40): False,  # above it: leftover noise
             (29.5, 1.33): True,  # 3 dB and the band's upper edge count
             (30.5, 0.75): True}  # and its lower edge
    for (psnr, sharp), met in cases.items():
        row = quality.detailed_rows(ONE_STEP, evaluation(super_resolve=(psnr, sharp)), 16)[0]
        assert row["met"] is met, (psnr, sharp)

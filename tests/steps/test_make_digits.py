"""make_digits: a class on both sides is split between source and target, never shared."""

from __future__ import annotations

from components.make_digits import make_digits
from tlpipe.sections import MakeDigitsConfig


def test_a_class_on_both_sides_gives_a_third_of_its_images_to_the_source_and_none_to_both(tmp_path):
    cfg = MakeDigitsConfig(source_classes=[0, 1, 5, 8], target_classes=[5, 8, 9], image_size=8)
    counts = make_digits(cfg, tmp_path)
    names = {
        (part, digit): {f.name for f in (tmp_path / part / str(digit)).glob("*.png")}
        for part, digits in (("source", cfg.source_classes), ("target", cfg.target_classes))
        for digit in digits
    }
    for digit in (5, 8):
        source, target = names["source", digit], names["target", digit]
        assert not source & target  # no image in both sets
        assert len(source) == -(-(len(source) + len(target)) // 3)  # every third image, the first included
    assert len(names["source", 0]) == 178 and len(names["target", 9]) == 180  # unshared classes keep them all
    assert len(names["source", 8]) + len(names["target", 8]) == 174
    assert counts == {
        "source": sum(len(v) for k, v in names.items() if k[0] == "source"),
        "target": sum(len(v) for k, v in names.items() if k[0] == "target"),
    }

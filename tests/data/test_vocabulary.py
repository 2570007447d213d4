"""The shapes world's vocabulary in GenEval's terms: its phrasing rules (an article by the vowel rule,
GenEval's plural) and its relative-position rule: the centre offset, shrunk by a tenth of the boxes'
summed sizes along each axis, names a direction where it keeps more than half the offset's length, so
near-centred boxes get none and a diagonal gets two."""

from __future__ import annotations

from fluid_lightning.data.vocabulary import plural, relative_position, with_article


def test_articles_and_plurals_follow_genevals_rules():
    assert [with_article(w) for w in ("circle", "orange circle", "red square")] == [
        "a circle", "an orange circle", "a red square"]
    assert [plural(w) for w in ("square", "bus")] == ["squares", "buses"]


def test_relative_position_names_the_directions_box_a_lies_in_from_box_b():
    b = [40, 40, 60, 60]
    assert relative_position([0, 40, 20, 60], b) == {"left of"}
    assert relative_position([80, 40, 100, 60], b) == {"right of"}
    assert relative_position([40, 0, 60, 20], b) == {"above"}  # y grows downwards
    assert relative_position([40, 80, 60, 100], b) == {"below"}
    assert relative_position([0, 0, 20, 20], b) == {"left of", "above"}  # a diagonal names both
    assert relative_position([40, 40, 60, 60], b) == set()  # the same box: no direction
    # centres 6 apart along x, shrunk by a tenth of the summed widths (4) to 2: a third of 6, too close to call
    assert relative_position([34, 40, 54, 60], b) == set()
    assert relative_position([34, 40, 54, 60], b, threshold=0.05) == {"left of"}  # shrunk by 2 to 4
    assert relative_position([30, 40, 50, 60], b) == {"left of"}  # 10 apart: 6 after shrinking
    # far to the left but a little lower: only the dominant direction counts
    assert relative_position([0, 45, 20, 65], b) == {"left of"}

"""The evaluation suite: every tag's prompts can be repeated, each the same number of times, up to a
minimum per tag, without adding prompts."""

from __future__ import annotations

from fluid_lightning.data.shapes import evaluation_suite
from fluid_lightning.data.vocabulary import TAGS


def test_the_suite_can_repeat_each_tags_prompts_to_a_minimum():
    base = evaluation_suite()
    large = evaluation_suite(min_per_tag=32)
    counts = {tag: sum(s.tag == tag for s in large) for tag in TAGS}
    assert min(counts.values()) >= 32 and set(large) == set(base)
    for tag in TAGS:  # every prompt of a tag repeated the same number of times
        group = [s for s in base if s.tag == tag]
        assert counts[tag] % len(group) == 0 and all(large.count(s) == counts[tag] // len(group) for s in group)

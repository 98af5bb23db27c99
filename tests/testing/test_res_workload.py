"""The benchmark's RefCOCO-like workload: expressions per image around the real mean, captions of
5 to 15 tokens, and the same images in both splits."""

from __future__ import annotations

from hg_lmm.testing.res_workload import RES_SPLIT_SIZES, refs_per_image, res_workload


def test_refs_per_image_sum_to_the_mean() -> None:
    for k, mean in [(4, 2.54), (2, 2.54), (7, 2.0), (3, 1.0)]:
        counts = refs_per_image(k, mean, seed=k)
        assert len(counts) == k and min(counts) >= 1 and sum(counts) == round(mean * k)
    assert refs_per_image(4, 2.54, seed=1) == refs_per_image(4, 2.54, seed=1)  # seeded


def test_workload_shares_images_between_splits(llava_tokenizer) -> None:
    work = res_workload(llava_tokenizer, num_images=3, mean_refs=2.54, image_hw=(24, 32))
    refcoco, plus = work["refcoco"], work["refcoco+"]
    assert [s.image_path for s in refcoco] == [s.image_path for s in plus]
    assert all(a.image is b.image for a, b in zip(refcoco, plus))
    assert sum(s.num_masks for s in refcoco) == round(2.54 * 3)
    for s in refcoco + plus:
        assert s.masks.shape == (s.num_masks, 24, 32) and s.masks.any()
        for p in s.pieces:

            def count(text):
                return len(llava_tokenizer.encode(text, add_special_tokens=False))

            # At least the drawn length (5 to 15); one word fewer would be below it.
            assert count(p.text) >= 5 and count(p.text.rsplit(" ", 1)[0]) < 15, p.text


def test_split_sizes_are_refcoco_val_and_friends() -> None:
    assert RES_SPLIT_SIZES["refcoco_val"] == (1500, 3811)  # the figure
    assert len(RES_SPLIT_SIZES) == 8

"""The pieces of segment-everything, in pipeline order; ``SamAutomaticMaskGenerator``
(:mod:`mobilesam.automatic_mask_generator`) runs them.

- :mod:`.settings`: ``AmgSettings``, the generator's arguments checked once, the point grid of
  each crop layer and the crops of an image;
- :mod:`.batch`: ``BatchFilter``, the hot path: decode one batch of prompt points and keep the
  masks that pass SAM's filters, as RLE;
- :mod:`.candidates`: ``Candidates``, the surviving masks as parallel arrays, with the NMS,
  uncrop and small-region cleanup applied to them;
- :mod:`.output`: the annotation dictionaries of ``segment_anything``'s ``generate``.
"""

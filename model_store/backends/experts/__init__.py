"""Language experts (DistilWhisper's CLSR): a gated, per-language branch beside each frozen FFN.

The runtime half lives here, in ``model_store``, because the server must open such a variant;
training them is ``compression.experts``.
"""

METHOD = "lang-experts"  # the recipe method of a variant with language experts

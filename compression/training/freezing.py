"""Which parameters a full decoder fine-tune trains: shared by distillation and the experts baseline."""

from __future__ import annotations

from transformers import WhisperForConditionalGeneration


def train_decoder_only(model: WhisperForConditionalGeneration, train_embeddings: bool) -> None:
    """Freeze ``model`` but its decoder layers and final layer norm; with ``train_embeddings`` the token
    embedding (tied to the output projection) trains too. The positional embedding and the encoder stay
    frozen (so the encoder's outputs can be cached). On four languages at 200 utterances each, freezing
    the token embedding was the better fine-tuning (README, "Matched train data")."""
    model.requires_grad_(False)
    decoder = model.model.decoder
    decoder.layers.requires_grad_(True)
    decoder.layer_norm.requires_grad_(True)
    if train_embeddings:
        decoder.embed_tokens.requires_grad_(True)

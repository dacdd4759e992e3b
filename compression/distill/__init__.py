"""Distillation: shrink-and-distil students, DQ-Whisper matching, quantization-aware and guided compression."""

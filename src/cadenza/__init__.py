"""Cadenza: a folder of MIDI in, a trained music Transformer and new music out."""

__version__ = "0.1.0"
